import Foundation
import TernAPI
import TernCPU
import TernHypervisor
import TernSaveFile

/// Moving VMs: save/restore, live migration (source and destination side) and quick migration.
///
/// Every way in (restore, incoming migration) passes ``VMHost/admit(_:as:)`` — the processor
/// compatibility check — before anything is started. Every way out keeps the VM on this host
/// until the other side has confirmed: a failure at any phase leaves it running (or paused, as it
/// was) here, and the destination discards what it had prepared.
extension VMHost {
    static let incomingNew = "being received"
    static let incomingReplacing = "being received, replacing a shut-off definition"

    /// The version written into save files.
    public static let ternVersion = "0.5.0"

    // MARK: - The gate

    /// The processor compatibility check for a VM coming here: the features it has now against
    /// what this host can offer. Returns its definition and guest CPU when it may come.
    func admit(_ transfer: VMTransfer, as name: String) throws -> (VMDefinition, GuestCPU) {
        let definition = try VMDefinition(xml: transfer.definition).renamed(name)
        let cpu = try guestCPU(transfer.cpu)
        guard let offer = capabilities.guestOffer else { throw HostError.database("this host has no guest offer") }
        let verdict = map.checkMigration(vm: cpu.resolved, destination: offer)
        guard verdict.allowed else {
            throw HostError.incompatibleCPU(
                name: name, source: "\(transfer.source.hostname) (\(transfer.source.cpuSource))",
                reason: verdict.reason ?? "incompatible", missing: verdict.missing)
        }
        return (definition, cpu)
    }

    /// The gate alone, for a VM that would come here later (a quick migration asks before it
    /// saves): the compatibility check, and that no VM here has its name. Nothing is prepared.
    public func checkIncoming(_ transfer: VMTransfer) throws -> IncomingCheckReply {
        _ = try admit(transfer, as: transfer.name)
        if (try? find(transfer.name)) != nil { throw HostError.alreadyExists(transfer.name) }
        return IncomingCheckReply(name: transfer.name, host: fingerprint())
    }

    /// This host as save files and migration requests record it.
    func fingerprint() -> HostFingerprint {
        let host = capabilities.host.cpu
        return HostFingerprint(
            hostname: ProcessInfo.processInfo.hostName, cpuSource: capabilities.host.source, vendor: host.vendor,
            family: host.signature?.family, model: host.signature?.model, stepping: host.signature?.stepping,
            accelerator: hypervisor.accelerator.rawValue,
            offer: capabilities.guestOffer.map { map.registry.names(of: $0.features) } ?? [])
    }

    /// What travels with a running VM.
    func transfer(_ record: VMRecord, as name: String? = nil) throws -> VMTransfer {
        guard let text = record.guestCPU, let cpu = try? JSONDecoder().decode(GuestCPUInfo.self, from: Data(text.utf8)) else {
            throw HostError.database("VM '\(record.name)' has no recorded guest CPU")
        }
        return VMTransfer(
            name: name ?? record.name, definition: record.definition, cpu: cpu, source: fingerprint(),
            running: record.state == "running")
    }

    // MARK: - Save and restore

    /// What a move's request may ask for (the CLI checks the same; the API is open to others).
    static func checkMoveRequest(_ parameters: MigrationParameters, timeoutSeconds: Int?) throws {
        if let problem = parameters.problem(timeoutSeconds: timeoutSeconds) { throw HostError.badRequest(problem) }
    }

    /// Paths in a request are opened by this daemon, which does not run where its client does.
    static func requireAbsolute(_ path: String, _ what: String) throws {
        guard path.hasPrefix("/") else {
            throw HostError.badRequest("\(what) '\(path)' must be absolute: this daemon does not run where you do")
        }
    }

    /// Writes a running or paused VM's state to `path` (see `TernSaveFile` for the format), then
    /// stops it here. On any failure the partial file is removed and the VM goes on as it was.
    public func save(_ name: String, to path: String) async throws -> SaveReport {
        let clock = ContinuousClock()
        let begin = clock.now
        try Self.requireAbsolute(path, "the save file's path")
        var (record, vm) = try running(name, action: "save")
        let transfer = try transfer(record)
        moving.insert(name)
        abortRequested.remove(name)
        defer { moving.remove(name) }
        let writer = try SaveFileWriter(path: path, metadata: try JSONEncoder().encode(transfer))
        let socket = files(name).directory.appendingPathComponent("save.sock").path
        let cancellation = CopyCancellation()
        let size: Int
        do {
            try writer.listen(at: socket)
            let receiving = Task { try await writer.receiveStream(cancellation: cancellation) }
            do {
                try await vm.migrate(to: .unixSocket(socket), parameters: .save)
                _ = try await follow(name, vm, timeoutSeconds: nil, postcopy: false)
                try await receiving.value
            } catch {
                cancellation.cancel()
                _ = try? await receiving.value
                throw error
            }
            size = try await writer.finish(ternVersion: Self.ternVersion)
        } catch {
            writer.discard()
            await cancelIfUnfinished(vm)
            let state = await keepHere(name, vm, running: transfer.running)
            throw HostError.migrationFailed(name: name, phase: "save", reason: "\(error)", vmState: state)
        }
        // Saved: the VM stops here; its definition stays, shut off.
        instances[name] = nil
        try? await vm.destroy()  // returns once the process has ended (or been killed)
        record.state = "shutoff"
        record.pid = nil
        record.reason = "saved to \(path)"
        try store.save(record)
        return SaveReport(vm: info(record), path: path, bytes: size, durationMs: milliseconds(clock.now - begin))
    }

    /// Restores a VM from a save file written on this or another host: checks the file, runs the
    /// processor compatibility check, receives the state into a paused VM, checks the stream's
    /// checksum, and only then lets it run.
    public func restore(_ request: RestoreRequest) async throws -> RestoreReport {
        let clock = ContinuousClock()
        let begin = clock.now
        try Self.requireAbsolute(request.path, "the save file's path")
        let reader = try SaveFileReader(path: request.path)
        let transfer: VMTransfer
        do {
            transfer = try JSONDecoder().decode(VMTransfer.self, from: reader.metadata)
        } catch {
            throw HostError.badSaveFile(path: request.path, reason: "its metadata cannot be read: \(error)")
        }
        let name = request.name ?? transfer.name
        let (definition, cpu) = try admit(transfer, as: name)
        let socket = incomingSocket(name)
        let (vm, _) = try await receive(
            name, definition: definition, cpu: cpu, cpuInfo: transfer.cpu, address: .unixSocket(socket),
            parameters: .save, autostart: false, timeoutSeconds: nil)
        do {
            var sendError: SaveFileError?
            do { try await reader.sendStream(to: socket, cancellation: CopyCancellation()) } catch { sendError = error }
            if let sendError {
                // When the hypervisor gave up on the stream, say whether the file is why.
                if sendError.isInputOutput { try await reader.verifyStream() }
                throw sendError
            }
            try await waitUntilReceived(name, vm)
            if transfer.running && request.paused != true { try await vm.resume() }
        } catch {
            await discardIncoming(name)
            throw error
        }
        let record = try commitIncoming(name, state: transfer.running && request.paused != true ? "running" : "paused")
        return RestoreReport(vm: info(record), source: transfer.source, durationMs: milliseconds(clock.now - begin))
    }

    // MARK: - Receiving (destination side)

    /// Destination, first phase: the gate, then a VM waiting for the stream.
    public func prepareIncoming(_ request: IncomingMigrationRequest) async throws -> IncomingMigrationReply {
        try Self.checkMoveRequest(request.parameters, timeoutSeconds: request.timeoutSeconds)
        let (definition, cpu) = try admit(request.vm, as: request.vm.name)
        let (_, address) = try await receive(
            request.vm.name, definition: definition, cpu: cpu, cpuInfo: request.vm.cpu,
            address: request.sameMachine == true ? localStreamAddress(request.vm.name) : .tcp(host: migrationHost, port: 0),
            parameters: request.parameters, autostart: false, timeoutSeconds: request.timeoutSeconds)
        resumeOnArrival[request.vm.name] = request.vm.running
        receivingAt[request.vm.name] = address
        return IncomingMigrationReply(address: address)
    }

    /// Destination: a post-copy stream that broke off (the guest runs here, stalled on the memory
    /// it lacks) listens again, the way it first did, for the source to send the rest.
    public func recoverIncoming(_ name: String) async throws -> IncomingMigrationReply {
        guard incoming[name] != nil, discarding[name] == nil, let vm = instances[name], let first = receivingAt[name] else {
            throw HostError.invalidState(name: name, state: (try? find(name).state) ?? "not defined", action: "resume the stream of")
        }
        let status = try await vm.migrationProgress().status
        guard status == .postcopyPaused else {
            throw HostError.invalidState(name: name, state: "receiving (\(status.rawValue))", action: "resume the stream of")
        }
        var address = first
        switch first {
        case .tcp(let host, _): address = .tcp(host: host, port: 0)
        case .unixSocket(let path): try? FileManager.default.removeItem(atPath: path)
        }
        return IncomingMigrationReply(address: try await vm.recoverIncoming(at: address))
    }

    /// Where a VM arriving from a daemon on this machine is received: a Unix socket in its
    /// directory, which carries the stream faster than TCP over loopback; TCP where the path is
    /// too long for a socket address.
    private func localStreamAddress(_ name: String) -> MigrationAddress {
        let path = incomingSocket(name)
        return path.utf8.count < 100 ? .unixSocket(path) : .tcp(host: migrationHost, port: 0)
    }

    /// The Unix socket an incoming VM's state arrives through (from a save file, or from a
    /// daemon on this machine).
    private func incomingSocket(_ name: String) -> String {
        files(name).directory.appendingPathComponent("incoming.sock").path
    }

    /// Destination, last phase: waits until the state is in, lets the guest run (if it ran on the
    /// source), then keeps the VM. The receiving VM never runs before this: if the source or the
    /// link vanishes, there is never a second running copy.
    public func finishIncoming(_ name: String) async throws -> IncomingMigrationFinish {
        if let underway = finishing[name] { return try await underway.value }
        guard incoming[name] != nil, discarding[name] == nil, let vm = instances[name] else {
            throw HostError.invalidState(name: name, state: (try? find(name).state) ?? "not defined", action: "finish receiving")
        }
        let finish = Task { try await self.completeIncoming(name, vm) }
        finishing[name] = finish
        defer { finishing[name] = nil }
        return try await finish.value
    }

    private func completeIncoming(_ name: String, _ vm: any VirtualMachineInstance) async throws -> IncomingMigrationFinish {
        do {
            let resumes = resumeOnArrival[name] == true
            // Asked while the state is still arriving, the hypervisor resumes the guest the moment
            // it has all of it (and never if the stream fails); asked after, at once.
            if resumes { try await vm.resume() }
            try await waitUntilReceived(name, vm)
            var state = try await vm.runState()
            // A guest paused on the source when its last pass began (a non-live move, or one
            // whose first pass was made paused and finished at once) arrives marked paused, and
            // the hypervisor then keeps it paused despite the word to resume: say it again.
            if resumes, state == .paused {
                try await vm.resume()
                state = try await vm.runState()
            }
            let resumed = ContinuousClock.now
            guard state == .running || state == .paused else {
                throw HypervisorError.commandFailed(command: "query-status", message: "the received guest is \(state.rawValue)")
            }
            // Discarded meanwhile (its time limit, or its process ended): it cannot be kept.
            guard incoming[name] != nil, discarding[name] == nil, instances[name]?.pid == vm.pid else {
                throw HostError.invalidState(name: name, state: "discarded", action: "finish receiving")
            }
            let record = try commitIncoming(name, state: state.rawValue)
            // The RESUME event may trail the reply to `cont` by a moment.
            var resumedAt = vm.lastResumed
            for _ in 0..<20 where resumedAt == nil && resumes {
                try? await Task.sleep(for: .milliseconds(1))
                resumedAt = vm.lastResumed
            }
            return IncomingMigrationFinish(
                vm: info(record), afterResumeMs: Double(milliseconds(ContinuousClock.now - resumed)), resumedAt: resumedAt)
        } catch {
            await discardIncoming(name)
            throw error
        }
    }

    /// Destination: gives up an incoming VM (the source keeps it), and says what is here now: a
    /// VM in state `undefined` when it was discarded; the VM itself, running or paused, when it
    /// had already arrived (told to run, it may have run: then it stays, and the source must
    /// forget its copy). A confirmation underway is waited for first, so the answer is final.
    public func abortIncoming(_ name: String) async throws -> VMInfo {
        if let underway = finishing[name] { _ = try? await underway.value }
        guard incoming[name] != nil || discarding[name] != nil else {
            if instances[name] != nil, let record = try store.find(name), record.state == "running" || record.state == "paused" {
                return info(record)
            }
            throw HostError.invalidState(name: name, state: (try? find(name).state) ?? "not defined", action: "abort receiving")
        }
        await discardIncoming(name)
        return VMInfo(
            name: name, state: "undefined", vcpus: 0, memoryMiB: 0, cpu: nil, pid: nil, consoleLog: "", consoleSocket: "",
            reason: "incoming migration aborted", lastConsoleLines: nil)
    }

    /// `tern destroy` on a VM still receiving its state (its source gone, say): discarded as its
    /// source would have it discarded, and the source's move then fails with its VM still there.
    /// Not once the guest runs here, in post-copy or arriving: this is then its only running copy.
    func destroyIncoming(_ name: String) async throws -> VMInfo {
        let status = try? await instances[name]?.migrationProgress().status
        if finishing[name] != nil || status == .postcopy || status == .postcopyPaused {
            let state = finishing[name] != nil ? "arriving" : "running here in post-copy, part of its memory still on its source"
            throw HostError.invalidState(name: name, state: state, action: "destroy")
        }
        var gone = try await abortIncoming(name)
        gone.reason = "its incoming migration was discarded ('tern destroy')"
        // A shut-off VM it was to replace is back.
        return (try? store.find(name)).flatMap { $0.map(info) } ?? gone
    }

    /// Starts the VM that receives `name`'s state, recording it as incoming (a VM of that name
    /// that is shut off here is replaced only once the VM has arrived).
    private func receive(
        _ name: String, definition: VMDefinition, cpu: GuestCPU, cpuInfo: GuestCPUInfo, address: MigrationAddress,
        parameters: MigrationParameters, autostart: Bool, timeoutSeconds: Int?
    ) async throws -> (any VirtualMachineInstance, MigrationAddress) {
        // The last incoming VM of this name, or the last one that left, may still be ending.
        if let underway = discarding[name] { await underway.value }
        if let leaving = departing[name] { await leaving.value }
        let previous = try store.find(name)
        if let previous, previous.state != "shutoff" && previous.state != "crashed" {
            throw HostError.invalidState(name: name, state: previous.state, action: "receive another")
        }
        guard incoming[name] == nil else { throw HostError.invalidState(name: name, state: "incoming", action: "receive another") }
        if let previous, let busy = busy(name) {
            throw HostError.invalidState(name: name, state: "\(previous.state) and \(busy)", action: "receive another")
        }
        incoming[name] = .some(previous)
        // The reason says, for a daemon restarted meanwhile, whether a definition was there before.
        var record = VMRecord(
            name: name, definition: definition.xml, state: "incoming", pid: nil, guestCPU: encode(cpuInfo),
            reason: previous == nil ? Self.incomingNew : Self.incomingReplacing, lastConsoleLines: nil, updatedAt: Date())
        record.replaced = previous.flatMap { try? JSONEncoder().encode($0) }.map { String(decoding: $0, as: UTF8.self) }
        do {
            if previous == nil { try store.insert(record) } else { try store.save(record) }
            let vmFiles = files(name)
            try FileManager.default.createDirectory(at: vmFiles.directory, withIntermediateDirectories: true)
            try? FileManager.default.removeItem(at: vmFiles.consoleLog)
            if case .unixSocket(let path) = address { try? FileManager.default.removeItem(atPath: path) }
            let (vm, listening) = try await hypervisor.startIncoming(
                try configuration(definition, cpu: cpu), files: vmFiles, address: address, parameters: parameters,
                autostart: autostart)
            instances[name] = vm
            record.pid = vm.pid
            try store.save(record)
            watch(name, vm)
            // A source that never finishes (it died, or the link did) must not leave this VM behind;
            // one that never even starts the stream (it died after preparing) not for long either.
            let limit = timeoutSeconds.map { $0 + 30 } ?? 24 * 3600
            Task {
                try? await Task.sleep(for: .seconds(limit))
                await self.discardIncomingIfStill(name, pid: vm.pid)
            }
            let unstarted = peerTimeout
            Task {
                try? await Task.sleep(for: unstarted)
                await self.discardIncomingIfStill(name, pid: vm.pid, onlyIfNeverStarted: true)
            }
            return (vm, listening)
        } catch {
            await discardIncoming(name)
            throw error
        }
    }

    private func discardIncomingIfStill(_ name: String, pid: Int32, onlyIfNeverStarted: Bool = false) async {
        guard incoming[name] != nil, finishing[name] == nil, let vm = instances[name], vm.pid == pid else { return }
        if onlyIfNeverStarted, (try? await vm.migrationProgress().status) != MigrationProgress.Status.none { return }
        await discardIncoming(name)
    }

    /// Waits (bounded) until an incoming VM reports its state received.
    private func waitUntilReceived(_ name: String, _ vm: any VirtualMachineInstance) async throws {
        var deadline = ContinuousClock.now + .seconds(120)
        while true {
            let progress = try await vm.receivingProgress()
            switch progress.status {
            case .completed: return
            case .failed, .cancelled:
                throw HypervisorError.commandFailed(
                    command: "migrate-incoming", message: progress.error ?? "receiving the state \(progress.status.rawValue)")
            case .postcopy, .postcopyPaused:
                // The guest runs here and pulls the rest (or waits for the source to resume the
                // stream): discarding it would lose the VM.
                deadline = ContinuousClock.now + .seconds(120)
                await vm.waitForMigrationChange(upTo: .milliseconds(50))
            default:
                if ContinuousClock.now > deadline { throw HypervisorError.timeout("the incoming state of '\(name)'") }
                // The receiving QEMU loads the state on the thread that answers queries: ask
                // rarely, and let its MIGRATION event say at once when the state is in.
                try Task.checkCancellation()
                await vm.waitForMigrationChange(upTo: .milliseconds(20))
            }
        }
    }

    /// An incoming VM has arrived: it is this host's now.
    private func commitIncoming(_ name: String, state: String) throws -> VMRecord {
        guard var record = try store.find(name) else { throw HostError.notFound(name) }
        incoming[name] = nil
        resumeOnArrival[name] = nil
        receivingAt[name] = nil
        record.state = state
        record.reason = nil
        record.replaced = nil
        try store.save(record)
        return record
    }

    /// Ends an incoming VM and puts back what was there before. Returns once that is done, also
    /// when another caller (the source's abort, the VM's own exit) started it.
    func discardIncoming(_ name: String) async {
        if let underway = discarding[name] { return await underway.value }
        guard let previous = incoming[name] else { return }
        let vm = instances[name]
        instances[name] = nil
        let discard = Task {
            if let vm {
                try? await vm.destroy()
                _ = await vm.waitForExit()
            }
            if let previous {
                try? store.save(previous)
            } else {
                try? store.delete(name)
                try? FileManager.default.removeItem(at: files(name).directory)
            }
            incoming[name] = nil
            resumeOnArrival[name] = nil
            receivingAt[name] = nil
            discarding[name] = nil
        }
        discarding[name] = discard
        await discard.value
    }

    // MARK: - Sending (source side)

    /// Live migration to the daemon at `request.destination` (or quick migration with
    /// `request.quickDirectory`). The VM stays here until the destination confirms it runs.
    ///
    /// Where the hypervisor's dirty-page tracking is exact only up to some number of passes
    /// (``Hypervisor/exactLiveMigrationPasses``), a live move that needed more is not
    /// committed: the destination discards its copy, the guest runs on here, and the move is
    /// made again with the guest paused for the transfer.
    public func migrate(_ name: String, _ request: MigrateRequest) async throws -> MigrationReport {
        try Self.checkMoveRequest(request.parameters, timeoutSeconds: request.timeoutSeconds)
        var request = request
        request.parameters = request.parameters.resolved
        let begin = ContinuousClock.now
        let (record, vm) = try running(name, action: "migrate")
        let transfer = try transfer(record)
        let endpoint = try APIClient.Endpoint(request.destination)
        if case .unixSocket(let socket) = endpoint { try Self.requireAbsolute(socket, "the destination's socket path") }
        if let directory = request.quickDirectory {
            try Self.requireAbsolute(directory, "the quick migration's directory")
            return try await quickMigrate(
                name, to: APIClient(endpoint: endpoint, timeout: peerTimeout), request: request, through: directory, begin: begin)
        }
        // Each of the destination's steps is bounded (its wait for the state: 120 s); past this, a
        // silent destination (a host gone, a link half-open) counts as not answering.
        let destination = APIClient(endpoint: endpoint, timeout: peerTimeout)
        moving.insert(name)
        abortRequested.remove(name)
        // Should this daemon restart before the move ends, it asks the destination where the VM
        // is (``settleInterruptedMove``); not for a move that may switch to post-copy, whose guest
        // may run there with part of its memory here.
        if !request.parameters.postcopy { recordMove(name, to: request.destination) }
        defer {
            moving.remove(name)
            recordMove(name, to: nil)
        }
        do {
            return try await stream(name, vm, transfer, to: destination, request, begin: begin)
        } catch let inexact as InexactCopy {
            var again = request
            again.parameters.live = false
            var report = try await stream(name, vm, transfer, to: destination, again, begin: begin)
            report.note =
                "the live attempt needed \(inexact.passes) or more passes over memory, but this hypervisor's dirty-page "
                + "tracking is exact only up to \(inexact.exactPasses); moved again with the guest paused for the transfer"
            return report
        }
    }

    /// A live move whose copy cannot be trusted (more passes than the hypervisor tracks exactly);
    /// the destination has discarded it and the guest runs here again.
    private struct InexactCopy: Error {
        var passes: Int
        var exactPasses: Int
    }

    /// After a live move turned out inexact: the destination discards its copy, the guest runs
    /// here again, and the move may be made again; if the guest cannot be resumed, the move
    /// fails as it is.
    private func discardInexactCopy(
        _ name: String, _ vm: any VirtualMachineInstance, at destination: APIClient, _ inexact: InexactCopy
    ) async throws -> Never {
        await abandonIncoming(name, at: destination)
        let state = await keepHere(name, vm, running: true)
        guard state == "running" else {
            throw HostError.migrationFailed(
                name: name, phase: "the transfer",
                reason: "\(inexact.passes) passes over memory, more than the \(inexact.exactPasses) this hypervisor tracks exactly",
                vmState: state)
        }
        throw inexact
    }

    /// Asks the destination to discard what it prepared for `name` (this host keeps the VM);
    /// whether it could changes nothing here.
    private func abandonIncoming(_ name: String, at destination: APIClient) async {
        _ = try? await destination.delete("/migrations/incoming/\(name)", as: VMInfo.self)
    }

    /// A post-copy move that failed after the switch: the guest has run on the destination, with
    /// part of its memory still here, so this copy is out of date and is never resumed. It stays
    /// paused here (the hypervisor can still send what the destination lacks), and the user is
    /// told plainly.
    private func interruptedPostcopy(
        _ name: String, _ vm: any VirtualMachineInstance, _ request: MigrateRequest, _ error: any Error
    ) async throws -> Never {
        migrations[name] = MigrationProgress(status: .failed, error: "\(error)")
        await keepPaused(name, vm, reason: "post-copy to \(request.destination) interrupted; this copy is out of date")
        let state = "paused, and out of date: after the switch to post-copy the guest ran on \(request.destination), "
            + "part of its memory still here; it is never resumed here"
        throw HostError.migrationFailed(name: name, phase: "post-copy", reason: "\(error)", vmState: state)
    }

    /// Where a VM is after a move failed once the destination had been told to run it on arrival.
    enum Whereabouts {
        /// Not running there (never arrived, or discarded): it may run here again.
        case here
        /// It arrived there and is this host's no longer.
        case there(VMInfo)
        /// The destination could not say: it may run there.
        case unknown(String)
    }

    /// Asks the destination to discard its copy, and learns from the answer where the VM is.
    /// `finishFailure` is how the word to resume failed, if it has (nil: no answer yet).
    private func whereIs(_ name: String, at destination: APIClient, finishFailure: (any Error)?) async -> Whereabouts {
        let finishAnswer = finishFailure as? APIError
        do {
            let found = try await destination.delete("/migrations/incoming/\(name)", as: VMInfo.self)
            return found.state == "running" || found.state == "paused" ? .there(found) : .here
        } catch let error as APIError where error.isAnswer {
            return .here  // nothing of it there
        } catch {
            // The destination does not answer: its copy runs only if the word to resume reached it,
            // and it did not if it was refused or never got through.
            if finishAnswer?.isAnswer == true || finishAnswer?.code == "unreachable" { return .here }
            return .unknown("\(error)")
        }
    }

    /// Acts on where the VM turned out to be after a failed move: runs it here again, forgets it
    /// (it runs there; the move is reported with a note), or keeps it paused here when that is not
    /// known, so that there are never two running copies.
    private func conclude(
        _ whereabouts: Whereabouts, _ name: String, _ vm: any VirtualMachineInstance, _ transfer: VMTransfer,
        _ request: MigrateRequest, begin: ContinuousClock.Instant, phase: String, reason: String
    ) async throws -> MigrationReport {
        switch whereabouts {
        case .here:
            let state = await keepHere(name, vm, running: transfer.running)
            throw HostError.migrationFailed(name: name, phase: phase, reason: reason, vmState: state)
        case .there(let arrived):
            let progress = try? await vm.migrationProgress()
            forget(name, vm)
            migrations[name] = progress
            var report = MigrationReport(
                vm: arrived, destination: request.destination, kind: request.parameters.live ? "live" : "non-live",
                totalMs: milliseconds(ContinuousClock.now - begin), prepareMs: 0, transferMs: 0, confirmMs: 0, downtimeMs: 0,
                bytes: progress?.transferredBytes ?? 0, rounds: progress?.rounds ?? 0, throughputMiBps: 0)
            report.note = "\(phase) failed (\(reason)), but \(request.destination) has the VM \(arrived.state): it is there now"
            return report
        case .unknown(let why):
            let advice = Self.resumeAdvice(name)
            await keepPaused(name, vm, reason: "moving to \(request.destination) failed; whether it runs there is not known: \(advice)")
            throw HostError.migrationFailed(
                name: name, phase: phase, reason: reason,
                vmState: "paused, because whether \(request.destination) runs it could not be learned (\(why)): \(advice)")
        }
    }

    /// Asks the destination to check and prepare. A destination reached through a Unix socket is
    /// on this machine, and is asked to take the stream through a Unix socket too (faster than
    /// TCP over loopback); should its socket not be reachable from here (another mount namespace,
    /// another user's directory), it is asked again for TCP.
    private func prepareDestination(
        _ name: String, _ transfer: VMTransfer, at destination: APIClient, _ request: MigrateRequest
    ) async throws -> IncomingMigrationReply {
        let sameMachine = if case .unixSocket = destination.endpoint { true } else { false }
        let ask = { (sameMachine: Bool) async throws -> IncomingMigrationReply in
            try await destination.post(
                "/migrations/incoming",
                body: IncomingMigrationRequest(
                    vm: transfer, parameters: request.parameters, timeoutSeconds: request.timeoutSeconds, sameMachine: sameMachine))
        }
        let reply = try await ask(sameMachine)
        guard case .unixSocket(let path) = reply.address, !Self.canConnect(toSocket: path) else { return reply }
        await abandonIncoming(name, at: destination)
        return try await ask(false)
    }

    /// Whether this process (and so the hypervisor it starts, as the same user in the same mount
    /// namespace) can connect to the Unix socket at `path`.
    static func canConnect(toSocket path: String) -> Bool {
        let type = (try? FileManager.default.attributesOfItem(atPath: path))?[.type] as? FileAttributeType
        return type == .typeSocket && FileManager.default.isWritableFile(atPath: path)
    }

    /// A post-copy stream that broke off (the guest runs on the destination, part of its memory
    /// still here): the destination listens again and this side sends the rest. Tried again
    /// every second for as long as the destination has to answer a step (`--peer-timeout`), the
    /// destination possibly noticing the break later than this side.
    /// Returns true, sending nothing, once `arrived` says the destination has all of the VM.
    private func resumePostcopy(
        _ name: String, _ vm: any VirtualMachineInstance, at destination: APIClient, arrived: () async -> Bool
    ) async throws -> Bool {
        let deadline = ContinuousClock.now + peerTimeout
        var lastError: any Error = HypervisorError.timeout("the destination to take up the post-copy stream again")
        while ContinuousClock.now < deadline {
            if await arrived() { return true }
            do {
                let reply: IncomingMigrationReply = try await destination.post("/migrations/incoming/\(name)/recover")
                try await vm.resumeMigration(to: reply.address)
                return false
            } catch {
                lastError = error
            }
            try await Task.sleep(for: .seconds(1))
        }
        throw HypervisorError.commandFailed(
            command: "migrate", message: "the post-copy stream broke off and could not be resumed: \(lastError)")
    }

    /// Records in the VM's record the destination of the move underway (nil: none).
    private func recordMove(_ name: String, to destination: String?) {
        guard var record = try? store.find(name), record.movingTo != destination else { return }
        record.movingTo = destination
        try? store.save(record)
    }

    /// A live move that a restart of this daemon interrupted (its record still names the
    /// destination): a stream still flowing is given up, then the destination is asked, as after a
    /// failed move, where the VM is. Arrived there: this copy is ended. Not there (never told to
    /// run it, the destination discards what it received): it runs here again if it ran before.
    /// No answer: it stays paused here, with the reason, so that it never runs twice.
    func settleInterruptedMove(_ name: String, _ vm: any VirtualMachineInstance, destination: String, wasRunning: Bool) async {
        moving.insert(name)
        defer {
            moving.remove(name)
            recordMove(name, to: nil)
        }
        await cancelIfUnfinished(vm)
        let whereabouts: Whereabouts
        do {
            whereabouts = await whereIs(
                name, at: APIClient(endpoint: try APIClient.Endpoint(destination), timeout: peerTimeout), finishFailure: nil)
        } catch {
            whereabouts = .unknown("\(error)")
        }
        let interrupted = "its move to \(destination) was interrupted by a restart of this daemon"
        switch whereabouts {
        case .there:
            forget(name, vm)
        case .here:
            let state = await keepHere(name, vm, running: wasRunning)
            if var record = try? store.find(name), instances[name] != nil {
                if let now = try? await vm.runState() { record.state = now.rawValue }
                record.reason = "\(interrupted); \(destination) did not have it, so it is \(state) here"
                try? store.save(record)
            }
        case .unknown(let why):
            await keepPaused(
                name, vm, reason: "\(interrupted), and whether it runs there could not be learned (\(why)): \(Self.resumeAdvice(name))")
        }
    }

    /// Pauses a VM whose whereabouts a move left in doubt, and records it as paused with the
    /// reason (unless its hypervisor ended meanwhile): it never runs twice.
    private func keepPaused(_ name: String, _ vm: any VirtualMachineInstance, reason: String) async {
        try? await vm.pause()
        guard var record = try? store.find(name), instances[name] != nil else { return }
        record.state = "paused"
        record.reason = reason
        try? store.save(record)
    }

    /// What the user of a VM paused in doubt should do.
    static func resumeAdvice(_ name: String) -> String {
        "check there; only if it does not run it, 'tern resume \(name)' here"
    }

    /// One attempt at moving the VM over a migration stream.
    private func stream(
        _ name: String, _ vm: any VirtualMachineInstance, _ transfer: VMTransfer, to destination: APIClient,
        _ request: MigrateRequest, begin: ContinuousClock.Instant
    ) async throws -> MigrationReport {
        let clock = ContinuousClock()
        migrations[name] = MigrationProgress(status: .setup)
        let vmState = transfer.running ? "running" : "paused"
        // Passes beyond which this copy could miss guest writes (nil: no such limit).
        let exactPasses = transfer.running && request.parameters.live ? hypervisor.exactLiveMigrationPasses : nil

        // 1. The destination runs the compatibility check and prepares; nothing moves before.
        // Meanwhile this side applies the migration's settings (`stream` applies them otherwise).
        postcopyStarted.remove(name)
        defer { postcopyStarted.remove(name) }
        let settingUp = Task { try await vm.prepareMigration(request.parameters) }
        defer { settingUp.cancel() }
        let reply: IncomingMigrationReply
        do {
            reply = try await prepareDestination(name, transfer, at: destination, request)
        } catch {
            // Without its answer, the destination may have started a receiving VM all the same.
            if (error as? APIError)?.isAnswer != true { await abandonIncoming(name, at: destination) }
            migrations[name] = MigrationProgress(status: .failed, error: "\(error)")
            throw HostError.migrationFailed(name: name, phase: "preparation on \(request.destination)", reason: "\(error)", vmState: vmState)
        }

        // 2. The stream (a hypervisor whose tracking is exact only up to some passes never sends
        // the last pass of a copy that needed more: it gives the stream up, and the guest runs on
        // here). 3. The word to resume: sent as soon as the source has stopped the guest for its
        // last pass, if the passes are few enough (the destination resumes once it has all of the
        // state, and says so).
        var final: MigrationProgress?
        let transferBegin = clock.now
        var confirmBegin = clock.now
        var confirmation: Task<IncomingMigrationFinish, any Error>?
        let finishPath = "/migrations/incoming/\(name)/finish"
        var setupPause = Duration.zero
        var postcopyResumes = 0
        do {
            _ = try? await settingUp.value
            if abortRequested.contains(name) { throw Self.aborted }
            setupPause = try await vm.migrate(to: reply.address, parameters: request.parameters)
            final = try await follow(
                name, vm, timeoutSeconds: request.timeoutSeconds.map { max(1, $0 - seconds(clock.now - begin)) },
                postcopy: request.parameters.postcopy,
                // With exact tracking limited, post-copy starts before a second pass could run
                // with the guest running, and a pre-copy doomed to need more passes is given up
                // at once.
                postcopyAfterPasses: exactPasses == nil ? 2 : 1,
                giveUpAtPasses: request.parameters.postcopy ? nil : exactPasses,
                onFinalPhase: { progress in
                    // With exact tracking limited, only once the passes are known to be few enough.
                    if confirmation == nil, exactPasses.map({ progress.rounds <= $0 }) ?? true {
                        confirmBegin = ContinuousClock.now
                        confirmation = Task { try await destination.post(finishPath) }
                    }
                },
                onPostcopyPaused: {
                    // The break may have come after the destination had every page, and said so.
                    let told = confirmation
                    let arrived = { () async -> Bool in
                        guard let told else { return false }
                        if case .success = await Self.result(of: told, within: .milliseconds(1)) { return true }
                        return false
                    }
                    if try await self.resumePostcopy(name, vm, at: destination, arrived: arrived) { return true }
                    postcopyResumes += 1
                    return false
                })
        } catch let inexact as InexactCopy {
            await cancelIfUnfinished(vm)
            try await discardInexactCopy(name, vm, at: destination, inexact)
        } catch {
            if postcopyStarted.contains(name) { try await interruptedPostcopy(name, vm, request, error) }
            // If the destination has the guest running after all, that is where it is now.
            var finished: Result<IncomingMigrationFinish, any Error>?
            if let task = confirmation { finished = await Self.result(of: task, within: .seconds(10)) }
            if case .success = finished {
            } else {
                await cancelIfUnfinished(vm)
                migrations[name] = MigrationProgress(status: .failed, error: "\(error)")
                guard confirmation != nil else {
                    // Never told to run the guest, the destination cannot have: it stays here.
                    await abandonIncoming(name, at: destination)
                    let state = await keepHere(name, vm, running: transfer.running)
                    throw HostError.migrationFailed(name: name, phase: "the transfer", reason: "\(error)", vmState: state)
                }
                let failure: (any Error)? = if case .failure(let finishError) = finished { finishError } else { nil }
                return try await conclude(
                    await whereIs(name, at: destination, finishFailure: failure), name, vm, transfer, request, begin: begin,
                    phase: "the transfer", reason: "\(error)")
            }
        }
        // Should the hypervisor have sent more passes than it tracks exactly after all, the
        // destination (not told to resume) discards that copy.
        if let exactPasses, let final, !request.parameters.postcopy, confirmation == nil, final.rounds > exactPasses {
            try await discardInexactCopy(name, vm, at: destination, InexactCopy(passes: final.rounds, exactPasses: exactPasses))
        }
        let transferMs = milliseconds(clock.now - transferBegin)
        if confirmation == nil {
            confirmBegin = clock.now
            confirmation = Task { try await destination.post(finishPath) }
        }

        // Until the destination confirms the guest runs there, this copy is kept.
        let remote: IncomingMigrationFinish
        do {
            remote = try await confirmation!.value
        } catch {
            migrations[name] = MigrationProgress(status: .failed, error: "\(error)")
            return try await conclude(
                await whereIs(name, at: destination, finishFailure: error), name, vm, transfer, request, begin: begin,
                phase: "confirmation by \(request.destination)", reason: "\(error)")
        }
        var last = MigrationProgress(status: .completed)
        if let final { last = final } else if let progress = try? await vm.migrationProgress() { last = progress }
        let confirmMs = milliseconds(clock.now - confirmBegin)
        // The guest was stopped from the source's last pass (QEMU's downtime) until the destination
        // resumed it: the confirmation's round trip, less what the destination did after resuming.
        let resumeDelayMs = max(0, confirmMs - Int(remote.afterResumeMs))
        // Better, when both hypervisors said when: from the source's STOP to the destination's
        // RESUME (their wall clocks; exact on one machine, as good as the hosts' clock sync across).
        var downtimeMs = (last.downtimeMs ?? 0) + resumeDelayMs
        if let stopped = vm.lastStopped, let resumed = remote.resumedAt, resumed >= stopped, resumed - stopped < 3600 {
            downtimeMs = Int(((resumed - stopped) * 1000).rounded())
        }
        // A pause while the migration started (the hypervisor's dirty tracking needs one) counts too.
        downtimeMs += milliseconds(setupPause)

        // 4. Only now does this host stop and forget its copy.
        forget(name, vm)
        let totalMs = milliseconds(clock.now - begin)
        var report = MigrationReport(
            vm: remote.vm, destination: request.destination, kind: request.parameters.live ? "live" : "non-live",
            totalMs: totalMs, prepareMs: milliseconds(transferBegin - begin), transferMs: transferMs, confirmMs: confirmMs,
            downtimeMs: transfer.running ? downtimeMs : 0, bytes: last.transferredBytes, rounds: last.rounds,
            throughputMiBps: transferMs > 0 ? Double(last.transferredBytes) / 1_048_576 / (Double(transferMs) / 1000) : 0,
            setupPauseMs: setupPause > .zero ? milliseconds(setupPause) : nil, stream: reply.address.streamDescription)
        if postcopyResumes > 0 {
            report.note = "the post-copy stream broke off \(postcopyResumes == 1 ? "once" : "\(postcopyResumes) times") and was resumed"
        }
        return report
    }

    /// Quick migration: save to a file in `directory` (which the destination must see too), restore
    /// there, then forget the VM here. If the restore is refused or fails, the VM is restored here;
    /// the file is removed only once the VM runs from it somewhere.
    private func quickMigrate(
        _ name: String, to destination: APIClient, request: MigrateRequest, through directory: String, begin: ContinuousClock.Instant
    ) async throws -> MigrationReport {
        // The destination's gate first, so that a move it refuses stops nothing here.
        let record = try find(name)
        do {
            let _: IncomingCheckReply = try await destination.post("/migrations/check", body: try transfer(record))
        } catch {
            throw HostError.migrationFailed(
                name: name, phase: "the compatibility check on \(request.destination)", reason: "\(error)", vmState: record.state)
        }
        let path = URL(fileURLWithPath: directory).appendingPathComponent("\(name)-\(UUID().uuidString.prefix(8)).ternsave").path
        let saved = try await save(name, to: path)
        // Shut off here until it runs there: nothing starts it meanwhile.
        moving.insert(name)
        defer { moving.remove(name) }
        let restored: RestoreReport
        do {
            // A restore takes as long as its file does to read: no time limit on the answer.
            let restoring = APIClient(endpoint: destination.endpoint)
            restored = try await restoring.post("/restore", body: RestoreRequest(path: path))
        } catch {
            let failed = { (state: String) in
                HostError.migrationFailed(name: name, phase: "restore on \(request.destination)", reason: "\(error)", vmState: state)
            }
            // Without an answer, the destination may have restored it all the same: the file stays
            // and nothing is restored here.
            guard let answer = error as? APIError, answer.isAnswer || answer.code == "unreachable" else {
                throw failed("saved in \(path); whether \(request.destination) restored it is not known: check there, "
                    + "and only if it did not, 'tern restore \(path)' here")
            }
            // Refused or failed there: back where it was, from the same file (kept if that fails too).
            let back: RestoreReport
            do { back = try await restore(RestoreRequest(path: path, name: name)) } catch let here {
                throw failed("saved in \(path) (restoring it here failed too: \(here))")
            }
            try? FileManager.default.removeItem(atPath: path)
            throw failed(back.vm.state)
        }
        try? FileManager.default.removeItem(atPath: path)
        if (try? find(name))?.state == "shutoff" { forgetDefinition(name) }
        let totalMs = milliseconds(ContinuousClock.now - begin)
        return MigrationReport(
            vm: restored.vm, destination: request.destination, kind: "quick", totalMs: totalMs, prepareMs: 0,
            transferMs: saved.durationMs + restored.durationMs, confirmMs: 0,
            downtimeMs: saved.durationMs + restored.durationMs, bytes: saved.bytes, rounds: 1,
            throughputMiBps: Double(saved.bytes) / 1_048_576 / (Double(max(totalMs, 1)) / 1000))
    }

    /// What a move aborted by the user (``abortJob(_:)``) fails with.
    static let aborted = HypervisorError.commandFailed(command: "migrate", message: "aborted on request ('tern domjobabort')")

    /// Aborts a VM's outgoing save or live migration (libvirt's `domjobabort`): the stream is
    /// cancelled, and the move fails as any failed move does, so the VM stays here as it was. Not
    /// once a migration has switched to post-copy (the guest runs on the destination then).
    public func abortJob(_ name: String) async throws -> MigrationProgress {
        let record = try find(name)
        guard moving.contains(name), let vm = instances[name] else {
            let state = moving.contains(name)
                ? "saved, and being restored by the destination of its quick migration"
                : "\(record.state), with no save or migration stream underway"
            throw HostError.invalidState(name: name, state: state, action: "abort the job of")
        }
        if postcopyStarted.contains(name) {
            throw HostError.invalidState(
                name: name, state: "moving in post-copy (its guest runs on the destination)", action: "abort the job of")
        }
        abortRequested.insert(name)
        // At once if the stream is flowing; otherwise the move stops before it starts one.
        if let progress = try? await vm.migrationProgress(), !progress.isFinished, progress.status != .none {
            try? await vm.cancelMigration()
        }
        return migrations[name] ?? MigrationProgress(status: .setup)
    }

    /// The current or last migration of a VM.
    public func migrationProgress(_ name: String) throws -> MigrationProgress {
        _ = try find(name)
        return migrations[name] ?? MigrationProgress(status: .none)
    }

    /// Follows an outgoing migration until it completes; throws when it fails, is cancelled,
    /// stalls, or runs past its time limit.
    private func follow(
        _ name: String, _ vm: any VirtualMachineInstance, timeoutSeconds: Int?, postcopy: Bool,
        postcopyAfterPasses: Int = 2, giveUpAtPasses: Int? = nil, onFinalPhase: (MigrationProgress) -> Void = { _ in },
        onPostcopyPaused: () async throws -> Bool = { false }
    ) async throws -> MigrationProgress {
        let clock = ContinuousClock()
        let begin = clock.now
        var lastBytes = -1
        var lastChange = begin
        var switchedToPostcopy = false
        let stallLimit = Duration.seconds(30)
        while true {
            let progress = try await vm.migrationProgress()
            migrations[name] = progress
            if progress.status == .completing || progress.status == .completed { onFinalPhase(progress) }
            switch progress.status {
            case .completed: return progress
            case .failed: throw HypervisorError.commandFailed(command: "migrate", message: progress.error ?? "the stream failed")
            case .cancelled:
                if abortRequested.contains(name) { throw Self.aborted }
                throw HypervisorError.commandFailed(command: "migrate", message: "cancelled")
            case .abandoned:
                throw InexactCopy(passes: progress.rounds, exactPasses: hypervisor.exactLiveMigrationPasses ?? progress.rounds - 1)
            case .postcopyPaused:
                // Resumed (go on following), or the destination turned out to have it all.
                if try await onPostcopyPaused() { return progress }
                lastChange = clock.now
                continue
            default: break
            }
            let now = clock.now
            if progress.transferredBytes != lastBytes {
                lastBytes = progress.transferredBytes
                lastChange = now
            } else if now - lastChange > stallLimit {
                throw HypervisorError.timeout("the migration stream (no progress for 30 s)")
            }
            // Once the guest is stopped for the last pass, the end is moments away; once it runs on
            // the destination (post-copy), giving up would not bring it back: no timeout then.
            if let timeoutSeconds, progress.status != .completing, progress.status != .postcopy, !switchedToPostcopy,
                now - begin > .seconds(timeoutSeconds)
            {
                throw HypervisorError.timeout("the migration to finish (--timeout \(timeoutSeconds) s)")
            }
            // That many passes with the guest still running: the last one cannot be among them.
            // (Should the hypervisor still report the last pass, made with the guest stopped, as
            // active, the run state tells them apart.)
            if let giveUpAtPasses, progress.status == .active, progress.rounds >= giveUpAtPasses,
                try await vm.runState() == .running
            {
                throw InexactCopy(passes: progress.rounds + 1, exactPasses: giveUpAtPasses)
            }
            if postcopy, !switchedToPostcopy, progress.status == .active, progress.rounds >= postcopyAfterPasses {
                postcopyStarted.insert(name)
                try await vm.switchToPostcopy()
                switchedToPostcopy = true
            }
            // Every QMP query takes QEMU's big lock, which the guest and the migration thread
            // need too: poll rarely, and let the hypervisor's events (the last pass starts, the
            // migration ends) wake this at once. The destination resumes the guest only once this
            // has seen the last pass begin.
            try Task.checkCancellation()
            if abortRequested.contains(name), progress.status != .completing { throw Self.aborted }
            await vm.waitForMigrationChange(upTo: progress.status == .completing ? .milliseconds(5) : .milliseconds(50))
        }
    }

    /// After a move failed: the guest runs here again if it ran before. Returns the state it is
    /// in; if the hypervisor will not resume it, it is recorded as paused, with the reason.
    private func keepHere(_ name: String, _ vm: any VirtualMachineInstance, running: Bool) async -> String {
        guard running, (try? await vm.runState()) != .running else { return running ? "running" : "paused" }
        do {
            try await vm.resume()
            return "running"
        } catch {
            // Its hypervisor ended meanwhile: it is recorded as it ended.
            guard instances[name] != nil else { return (try? store.find(name))?.state ?? "gone" }
            if var record = try? store.find(name) {
                record.state = "paused"
                record.reason = "could not be resumed after a failed migration: \(error)"
                try? store.save(record)
            }
            return "paused (it could not be resumed: \(error); try 'tern resume \(name)')"
        }
    }

    /// After a failure: cancels the migration unless the hypervisor has already ended it (failed
    /// or cancelled), and waits (bounded) until it has.
    private func cancelIfUnfinished(_ vm: any VirtualMachineInstance) async {
        if let progress = try? await vm.migrationProgress(), progress.isFinished { return }
        try? await vm.cancelMigration()
        await waitUntilSettled(vm)
    }

    /// After a cancel: waits (bounded) until the hypervisor says the migration has ended.
    private func waitUntilSettled(_ vm: any VirtualMachineInstance) async {
        for _ in 0..<100 {
            guard let progress = try? await vm.migrationProgress() else { return }
            if progress.isFinished || progress.status == .none { return }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    /// The VM runs elsewhere now: remove its definition and end this copy. The move is reported
    /// without waiting for the hypervisor process to be gone (`departing` makes a VM of the same
    /// name wait for that). Its console log stays (as a record of what it printed here) until a
    /// VM of that name starts here again.
    private func forget(_ name: String, _ vm: any VirtualMachineInstance) {
        instances[name] = nil
        try? store.delete(name)
        // No other departure of this name is underway: the VM could not have come back before
        // the last one ended.
        departing[name] = Task {
            try? await vm.destroy()  // returns once the process has ended (or been killed)
            removeFiles(name)
            departing[name] = nil
        }
    }

    private func forgetDefinition(_ name: String) {
        try? store.delete(name)
        removeFiles(name)
    }

    private func removeFiles(_ name: String) {
        let vmFiles = files(name)
        for file in [vmFiles.controlSocket, vmFiles.consoleSocket, vmFiles.hypervisorLog] {
            try? FileManager.default.removeItem(at: file)
        }
    }

    /// A task's result if it ends within `limit`; nil if it takes longer.
    static func result<T: Sendable>(of task: Task<T, any Error>, within limit: Duration) async -> Result<T, any Error>? {
        let waiter = FirstResume<Result<T, any Error>?>()
        return await withCheckedContinuation { continuation in
            waiter.set(continuation)
            Task { waiter.resume(returning: await task.result) }
            Task {
                try? await Task.sleep(for: limit)
                waiter.resume(returning: nil)
            }
        }
    }

    func milliseconds(_ duration: Duration) -> Int {
        Int(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
    }

    func seconds(_ duration: Duration) -> Int { Int(duration.components.seconds) }
}

/// A continuation resumed by whichever of several racers comes first.
private final class FirstResume<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<T, Never>?
    func set(_ continuation: CheckedContinuation<T, Never>) { lock.withLock { self.continuation = continuation } }
    func resume(returning value: T) {
        let waiting = lock.withLock { () -> CheckedContinuation<T, Never>? in
            defer { continuation = nil }
            return continuation
        }
        waiting?.resume(returning: value)
    }
}

