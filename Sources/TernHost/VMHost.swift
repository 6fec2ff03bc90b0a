import Foundation
import TernAPI
import TernCPU
import TernHypervisor

/// One host: the VMs defined on it, their persistence, the supervision of their hypervisor
/// processes, and the compatibility gate for what they may run with.
///
/// Every VM's state lives in the state directory (`tern.sqlite`, and a directory per VM for its
/// console log and sockets), so a restarted daemon knows its VMs again and reattaches to
/// hypervisor processes that outlived it.
public actor VMHost {
    public let hypervisor: any Hypervisor
    public let capabilities: HostCapabilities
    public let stateDirectory: URL
    let store: VMStore
    var instances: [String: any VirtualMachineInstance] = [:]
    /// VMs being destroyed on purpose (so their exit is not reported as a crash).
    var destroying: Set<String> = []
    /// VMs being saved or migrated out (other actions wait until that has ended).
    var moving: Set<String> = []
    /// VMs being started (their hypervisor not yet recorded): nothing else may take the name.
    var starting: Set<String> = []
    /// The current or last migration of each VM, for progress reports.
    var migrations: [String: MigrationProgress] = [:]
    /// VMs being received (incoming migration or restore), with the record each replaced, if any.
    var incoming: [String: VMRecord?] = [:]
    /// Incoming migrations whose guest ran on the source (resumed here once arrived).
    var resumeOnArrival: [String: Bool] = [:]
    /// Where each incoming migration's stream arrives (a post-copy stream that broke off is
    /// taken up again the same way).
    var receivingAt: [String: MigrationAddress] = [:]
    /// Incoming VMs being discarded: done once their hypervisor has ended and what was there
    /// before is back. A new incoming VM of the same name waits for this.
    var discarding: [String: Task<Void, Never>] = [:]
    /// VMs that moved to another host, whose hypervisor here is still ending: done once it has
    /// and its files are gone. A VM of the same name started or received here waits for this.
    var departing: [String: Task<Void, Never>] = [:]
    /// Incoming VMs whose source has said "resume once the state is in", until that is settled
    /// (an abort waits for it).
    var finishing: [String: Task<IncomingMigrationFinish, any Error>] = [:]
    /// Outgoing migrations told to switch to post-copy: from then on the guest may run on the
    /// destination, and the copy here is never resumed.
    var postcopyStarted: Set<String> = []
    /// Outgoing saves and migrations the user asked to abort (`tern domjobabort`).
    var abortRequested: Set<String> = []
    /// Where incoming migration streams are received (TCP).
    public private(set) var migrationHost = "127.0.0.1"

    /// Sets the address incoming migration streams are received on.
    public func setMigrationHost(_ host: String) { migrationHost = host }

    /// How long another daemon has to answer each step of a migration from here; past it, whether
    /// it acted is not known (a VM it may run stays paused here). Its own steps are bounded at 120 s.
    public private(set) var peerTimeout: Duration = .seconds(180)

    /// Sets ``peerTimeout``.
    public func setPeerTimeout(_ limit: Duration) { peerTimeout = limit }

    /// Opens (or creates) the host's state under `stateDirectory`.
    public init(hypervisor: any Hypervisor, capabilities: HostCapabilities, stateDirectory: URL) throws {
        self.hypervisor = hypervisor
        self.capabilities = capabilities
        self.stateDirectory = stateDirectory
        try FileManager.default.createDirectory(at: stateDirectory.appendingPathComponent("vms"), withIntermediateDirectories: true)
        store = try VMStore(path: stateDirectory.appendingPathComponent("tern.sqlite").path)
    }

    var map: CPUMap { capabilities.map }

    func files(_ name: String) -> VMFiles {
        VMFiles(directory: stateDirectory.appendingPathComponent("vms").appendingPathComponent(name))
    }

    /// After a daemon (re)start: reattach to VMs whose hypervisor process is still there, and mark
    /// the others crashed with what their console said last.
    public func recover() async {
        for var record in (try? store.all()) ?? [] where record.state == "incoming" {
            if let pid = liveHypervisor(record) {
                // Told to resume before the restart, and running: it arrived, and stays (the source,
                // unable to learn that, keeps its copy paused).
                if let vm = try? await attach(record, pid: pid), (try? await vm.runState()) == .running {
                    instances[record.name] = vm
                    record.state = "running"
                    record.reason = "received; it was running when this daemon restarted"
                    record.replaced = nil
                    try? store.save(record)
                    watch(record.name, vm)
                    continue
                }
                // Interrupted while being received: the source kept the VM; this copy is ended.
                kill(pid, SIGKILL)
            }
            if record.reason == Self.incomingNew {
                try? store.delete(record.name)
                try? FileManager.default.removeItem(at: files(record.name).directory)
                continue
            }
            // The shut-off VM it was to replace comes back as it was.
            if let replaced = record.replaced, var previous = try? JSONDecoder().decode(VMRecord.self, from: Data(replaced.utf8)) {
                previous.reason = "a VM received in its place was interrupted by a daemon restart; this definition stays"
                try? store.save(previous)
                continue
            }
            record.state = "shutoff"
            record.pid = nil
            record.reason = "receiving it was interrupted by a daemon restart"
            try? store.save(record)
        }
        for record in (try? store.all()) ?? [] where record.state == "running" || record.state == "paused" {
            var record = record
            guard instances[record.name] == nil else { continue }  // just received (above)
            do {
                guard let pid = record.pid else { throw HypervisorError.notRunning(record.name) }
                let vm = try await attach(record, pid: pid)
                instances[record.name] = vm
                let state = (try? await vm.runState())?.rawValue ?? record.state
                if let destination = record.movingTo {
                    // Moving when the daemon stopped: the destination says where the VM is.
                    let wasRunning = record.state == "running"
                    record.state = state
                    record.reason = "its move to \(destination) was interrupted by a restart of this daemon; asking there"
                    try? store.save(record)
                    watch(record.name, vm)
                    moving.insert(record.name)
                    Task { await self.settleInterruptedMove(record.name, vm, destination: destination, wasRunning: wasRunning) }
                    continue
                }
                // Its move switched to post-copy: the guest runs on the destination, and this copy
                // never runs again (``resume(_:)`` refuses it). Or its whole state went out (a
                // migration or save finished) while this daemon was down: the destination may run it now.
                let outgoing = state == "paused" ? (try? await vm.migrationProgress())?.status : nil
                if outgoing == .postcopy || outgoing == .postcopyPaused {
                    record.reason = Self.outdatedByPostcopy
                } else if record.state == "running", outgoing == .completed {
                    record.reason =
                        "its state had been sent out (a migration or save finished) when this daemon restarted: if it "
                        + "was moving, check whether it runs on the destination, and resume it here only if it does not"
                }
                record.state = state
                try? store.save(record)
                watch(record.name, vm)
            } catch {
                record.state = "crashed"
                record.lastConsoleLines = encodeLines(lastConsoleLines(record.name))
                if let pid = liveHypervisor(record) {
                    // Still running, but this daemon cannot take it back (say, a CPU map that no
                    // longer knows its features): kept, with its pid, until the user ends it.
                    record.reason = "this daemon could not take its hypervisor back after a restart (\(error)); it still "
                        + "runs as pid \(pid): 'tern destroy \(record.name)' ends it"
                } else {
                    record.reason = withHypervisorMessage(
                        "its hypervisor process ended while the daemon was not running", record.name)
                    record.pid = nil
                }
                try? store.save(record)
            }
        }
        // A hypervisor started just before the last daemon ended, its pid never written down:
        // nothing can reach it (its sockets are replaced at the next start), so it is ended.
        for record in (try? store.all()) ?? [] {
            for pid in hypervisor.processes(of: files(record.name)) where pid != record.pid { kill(pid, SIGKILL) }
        }
    }

    /// The recorded hypervisor process of a VM, if it still runs (its command line names the
    /// VM's control socket, so a pid reused since is not taken for it).
    func liveHypervisor(_ record: VMRecord) -> Int32? {
        guard let pid = record.pid, hypervisor.isRunning(pid, for: files(record.name)) else { return nil }
        return pid
    }

    /// Connects to the hypervisor process of a VM this daemon started before it restarted.
    private func attach(_ record: VMRecord, pid: Int32) async throws -> any VirtualMachineInstance {
        let definition = try VMDefinition(xml: record.definition)
        return try await hypervisor.attach(try configuration(definition, cpu: storedCPU(record)), files: files(record.name), pid: pid)
    }

    // MARK: - Definitions

    /// Defines a VM from domain XML. Its CPU definition is checked against the CPU map now
    /// (unknown models and features are refused); whether this host can offer it is checked at start.
    public func define(xml: String) throws -> VMInfo {
        let definition = try VMDefinition(xml: xml)
        _ = try definition.cpuConfig(map: map)
        if case .definition(let cpu) = definition.cpu {
            if let model = cpu.model { _ = try map.lookupModel(model) }
            for feature in cpu.features { _ = try map.registry.lookup(feature.name) }
        }
        if try store.find(definition.name) != nil { throw HostError.alreadyExists(definition.name) }
        let record = VMRecord(
            name: definition.name, definition: xml, state: "shutoff", pid: nil, guestCPU: nil, reason: nil,
            lastConsoleLines: nil, updatedAt: Date())
        try store.insert(record)
        return info(record)
    }

    /// Removes a shut-off VM's definition and files.
    public func undefine(_ name: String) throws -> VMInfo {
        let record = try find(name)
        guard record.state == "shutoff" || record.state == "crashed" else {
            throw HostError.invalidState(name: name, state: record.state, action: "undefine")
        }
        if let busy = busy(name) { throw HostError.invalidState(name: name, state: "\(record.state) and \(busy)", action: "undefine") }
        try store.delete(name)
        try? FileManager.default.removeItem(at: files(name).directory)
        var gone = info(record)
        gone.state = "undefined"
        return gone
    }

    // MARK: - Lifecycle

    /// Starts a VM: computes its guest CPU on this host afresh, refuses (naming the missing
    /// features) if this host cannot offer it, then starts the hypervisor.
    public func start(_ name: String) async throws -> VMInfo {
        var record = try find(name)
        guard record.state == "shutoff" || record.state == "crashed" else {
            throw HostError.invalidState(name: name, state: record.state, action: "start")
        }
        if let busy = busy(name) { throw HostError.invalidState(name: name, state: "\(record.state) and \(busy)", action: "start") }
        if instances[name] == nil, let pid = liveHypervisor(record) {
            throw HostError.invalidState(
                name: name, state: "\(record.state), its hypervisor still running as pid \(pid) ('tern destroy' ends it)", action: "start")
        }
        starting.insert(name)
        defer { starting.remove(name) }
        let definition = try VMDefinition(xml: record.definition)
        guard let offer = capabilities.guestOffer else { throw HostError.database("no guest offer") }
        let cpu = try map.guestCPU(try definition.cpuConfig(map: map), host: offer)
        if let leaving = departing[name] { await leaving.value }
        let configuration = try configuration(definition, cpu: cpu)
        let vmFiles = files(name)
        try FileManager.default.createDirectory(at: vmFiles.directory, withIntermediateDirectories: true)
        try? FileManager.default.removeItem(at: vmFiles.consoleLog)
        let vm = try await hypervisor.start(configuration, files: vmFiles)
        instances[name] = vm
        record.state = "running"
        record.pid = vm.pid
        record.reason = nil
        record.lastConsoleLines = nil
        record.guestCPU = encode(storedCPU(cpu, mode: definition.cpu))
        try store.save(record)
        watch(name, vm)
        return info(record)
    }

    /// Asks the guest to power off (ACPI); the VM becomes shut off when it has.
    public func shutdown(_ name: String) async throws -> VMInfo {
        let (record, vm) = try running(name, action: "shut down")
        try await vm.shutdown()
        return info(record)
    }

    /// Ends a VM at once.
    public func destroy(_ name: String) async throws -> VMInfo {
        if incoming[name] != nil { return try await destroyIncoming(name) }
        if instances[name] == nil, var record = try? find(name), let pid = liveHypervisor(record) {
            // A hypervisor this daemon could not take back after a restart (``recover()``).
            kill(pid, SIGKILL)
            for _ in 0..<2500 where liveHypervisor(record) != nil { try? await Task.sleep(for: .milliseconds(2)) }
            record.state = "shutoff"
            record.pid = nil
            record.reason = "destroyed"
            try store.save(record)
            return info(record)
        }
        let (_, vm) = try running(name, action: "destroy")
        destroying.insert(name)
        try await vm.destroy()
        _ = await vm.waitForExit()
        await exited(name, .killed(signal: 9), pid: vm.pid)
        return info(try find(name))
    }

    /// Pauses a VM's vCPUs (libvirt's suspend).
    public func suspend(_ name: String) async throws -> VMInfo {
        var (record, vm) = try running(name, action: "suspend")
        try await vm.pause()
        record.state = "paused"
        try store.save(record)
        return info(record)
    }

    /// Resumes a paused VM.
    public func resume(_ name: String) async throws -> VMInfo {
        var (record, vm) = try running(name, action: "resume")
        if record.state == "paused", let status = try? await vm.migrationProgress().status, status == .postcopy || status == .postcopyPaused {
            throw HostError.invalidState(name: name, state: Self.outdatedByPostcopy, action: "resume")
        }
        try await vm.resume()
        record.state = "running"
        try store.save(record)
        return info(record)
    }

    // MARK: - Inspection

    public func info(_ name: String) throws -> VMInfo { info(try find(name)) }

    public func list() throws -> [VMInfo] { try store.all().map { info($0) } }

    /// The last `count` lines of a VM's console.
    public func console(_ name: String, lines count: Int) throws -> [String] {
        guard count >= 0 else { throw HostError.badRequest("a number of console lines must not be negative (\(count))") }
        _ = try find(name)
        return lastConsoleLines(name, count: count)
    }

    /// The host as the API reports it.
    public func hostInfo() throws -> HostInfo {
        HostInfo(
            hostname: ProcessInfo.processInfo.hostName, accelerator: hypervisor.accelerator.rawValue,
            acceleratorReason: capabilities.acceleratorReason, hostCPUSource: capabilities.host.source,
            vendor: capabilities.host.cpu.vendor,
            offer: capabilities.guestOffer.map { map.registry.names(of: $0.features) } ?? [],
            capabilitiesXML: (try? capabilities.capabilitiesXML()) ?? "", vms: (try? store.all().count) ?? 0)
    }

    // MARK: - Supervision

    func watch(_ name: String, _ vm: any VirtualMachineInstance) {
        Task {
            let exit = await vm.waitForExit()
            await self.exited(name, exit, pid: vm.pid)
        }
    }

    /// The hypervisor process `pid` of VM `name` has ended. (When it is not the VM's current
    /// one, the VM has moved on — migrated away and back, saved and restored — and nothing changes.)
    func exited(_ name: String, _ exit: VMExit, pid: Int32) async {
        guard let current = instances[name], current.pid == pid else { return }
        if incoming[name] != nil {
            // The VM being received ended (its source vanished, or the stream was bad): nothing
            // of it is kept; the source still has the VM.
            await discardIncoming(name)
            return
        }
        instances[name] = nil
        guard var record = try? store.find(name) else { return }
        record.pid = nil
        if destroying.remove(name) != nil {
            record.state = "shutoff"
            record.reason = "destroyed"
        } else {
            switch exit {
            case .poweredOff:
                record.state = "shutoff"
                record.reason = nil
            case .panicked:
                record.state = "crashed"
                record.reason = "the guest kernel panicked"
                record.lastConsoleLines = encodeLines(lastConsoleLines(name))
            case .killed(let signal):
                record.state = "crashed"
                record.reason = withHypervisorMessage("the hypervisor process was killed (signal \(signal))", name)
                record.lastConsoleLines = encodeLines(lastConsoleLines(name))
            case .failed(let message):
                record.state = "crashed"
                record.reason = withHypervisorMessage(message, name)
                record.lastConsoleLines = encodeLines(lastConsoleLines(name))
            }
        }
        try? store.save(record)
    }

    // MARK: - Helpers

    /// Why a source copy whose move switched to post-copy must never run again.
    static let outdatedByPostcopy =
        "paused and out of date: its move switched to post-copy, so the guest runs on the destination"

    /// What a shut-off VM is in the middle of, if anything: being started, or being moved (a
    /// quick migration, saved here and being restored there).
    func busy(_ name: String) -> String? {
        if starting.contains(name) { return "being started" }
        if moving.contains(name) { return "being moved (quick migration)" }
        return nil
    }

    func find(_ name: String) throws -> VMRecord {
        guard let record = try store.find(name) else { throw HostError.notFound(name) }
        return record
    }

    func running(_ name: String, action: String) throws -> (VMRecord, any VirtualMachineInstance) {
        let record = try find(name)
        if moving.contains(name) {
            throw HostError.invalidState(name: name, state: "\(record.state) and being moved (save or migration)", action: action)
        }
        guard let vm = instances[name], record.state == "running" || record.state == "paused" else {
            throw HostError.invalidState(name: name, state: record.state, action: action)
        }
        return (record, vm)
    }

    func configuration(_ definition: VMDefinition, cpu: GuestCPU) throws -> VMConfiguration {
        VMConfiguration(
            name: definition.name, memoryMiB: definition.memoryMiB, vcpus: definition.vcpus, kernel: definition.kernel,
            initrd: definition.initrd, cmdline: definition.cmdline, disk: definition.disk, cpu: cpu,
            memoryBalloon: definition.memoryBalloon)
    }

    func storedCPU(_ cpu: GuestCPU, mode: VMDefinition.CPUChoice) -> GuestCPUInfo {
        let modeName: String
        switch mode {
        case .hostPassthrough: modeName = "host-passthrough"
        case .definition(let definition): modeName = definition.mode == .custom ? "custom" : definition.mode.rawValue
        case .compatibility: modeName = "compatibility"
        case .pool: modeName = "pool"
        }
        var notHonoured: [String] = []
        if let size = cpu.clflushLineSize, size != 64 {
            notHonoured.append("CLFLUSH line size \(size) bytes: the hypervisor always reports 64 bytes")
        }
        return GuestCPUInfo(
            mode: modeName, model: cpu.model, vendor: cpu.vendor, family: cpu.signature?.family,
            modelNumber: cpu.signature?.model, stepping: cpu.signature?.stepping, features: map.registry.names(of: cpu.features),
            clflushLineSize: cpu.clflushLineSize, notHonoured: notHonoured)
    }

    /// The guest CPU a record was started with.
    func storedCPU(_ record: VMRecord) throws -> GuestCPU {
        guard let text = record.guestCPU, let stored = try? JSONDecoder().decode(GuestCPUInfo.self, from: Data(text.utf8))
        else { throw HostError.database("VM '\(record.name)' has no recorded guest CPU") }
        return try guestCPU(stored)
    }

    /// A guest CPU from its description (stored, or sent by another host).
    func guestCPU(_ stored: GuestCPUInfo) throws -> GuestCPU {
        let signature = stored.family.map { CPUSignature(family: $0, model: stored.modelNumber ?? 0, stepping: stored.stepping ?? 0) }
        return GuestCPU(
            model: stored.model, vendor: stored.vendor, signature: signature, features: try map.registry.set(of: stored.features),
            clflushLineSize: stored.clflushLineSize)
    }

    func info(_ record: VMRecord) -> VMInfo {
        let definition = try? VMDefinition(xml: record.definition)
        let stored = record.guestCPU.flatMap { try? JSONDecoder().decode(GuestCPUInfo.self, from: Data($0.utf8)) }
        let vmFiles = files(record.name)
        return VMInfo(
            name: record.name, state: record.state, vcpus: definition?.vcpus ?? 0, memoryMiB: definition?.memoryMiB ?? 0,
            cpu: stored, pid: record.pid, consoleLog: vmFiles.consoleLog.path, consoleSocket: vmFiles.consoleSocket.path,
            reason: record.reason,
            lastConsoleLines: record.lastConsoleLines.flatMap { try? JSONDecoder().decode([String].self, from: Data($0.utf8)) })
    }

    /// The console's last lines; when they hold a kernel panic, from a few lines before it.
    func lastConsoleLines(_ name: String, count: Int = 20) -> [String] {
        guard let data = try? Data(contentsOf: files(name).consoleLog) else { return [] }
        let lines = String(decoding: data.suffix(65536), as: UTF8.self).split(whereSeparator: \.isNewline).map {
            $0.trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
        }
        if let panic = lines.lastIndex(where: { $0.contains("Kernel panic - not syncing") }) {
            return Array(lines[max(0, panic - 5)...].prefix(60))
        }
        return Array(lines.suffix(count))
    }

    /// `reason`, followed by the last line the hypervisor process wrote to its log (its own
    /// messages: an assertion that failed, the signal that ended it), if it wrote one.
    func withHypervisorMessage(_ reason: String, _ name: String) -> String {
        guard let data = try? Data(contentsOf: files(name).hypervisorLog),
            let last = String(decoding: data.suffix(4096), as: UTF8.self).split(whereSeparator: \.isNewline)
                .last(where: { !$0.allSatisfy(\.isWhitespace) })
        else { return reason }
        return "\(reason); its last message: \(last.trimmingCharacters(in: .whitespaces))"
    }

    func encode<T: Encodable>(_ value: T) -> String? {
        (try? JSONEncoder().encode(value)).map { String(decoding: $0, as: UTF8.self) }
    }

    func encodeLines(_ lines: [String]) -> String? { encode(lines) }
}
