import Foundation
import TernCPU
import TernHypervisor

#if canImport(Glibc)
import Glibc
#endif

/// The QEMU backend of ``Hypervisor``.
public struct QEMUHypervisor: Hypervisor {
    public let binary: String
    public let accelerator: Accelerator
    /// Why this accelerator was chosen.
    public let acceleratorReason: String
    public let capabilities: QEMUCapabilities
    public let map: CPUMap

    /// The smallest guest memory Tern accepts, in MiB (a Linux kernel with an initramfs needs
    /// more than this to boot at all).
    public static let minimumMemoryMiB = 64

    /// Finds QEMU, chooses the accelerator and learns what QEMU offers under it.
    ///
    /// - Throws: ``HypervisorError/notInstalled(_:)`` when QEMU is missing.
    public static func detect(map: CPUMap, binary: String? = nil, cacheDirectory: URL?) async throws -> QEMUHypervisor {
        let path = binary ?? ProcessInfo.processInfo.environment["TERN_QEMU"] ?? "/usr/bin/qemu-system-x86_64"
        guard FileManager.default.isExecutableFile(atPath: path) else { throw HypervisorError.notInstalled(path) }
        let (accelerator, reason) = QEMUAccelerator.detect()
        let capabilities = try await QEMUCapabilities.probe(binary: path, accelerator: accelerator, cacheDirectory: cacheDirectory)
        return QEMUHypervisor(
            binary: path, accelerator: accelerator, acceleratorReason: reason, capabilities: capabilities, map: map)
    }

    public func hostOffer() async throws -> ResolvedCPU {
        var features = QEMUGuestCPU.offer(capabilities, map: map)
        for name in QEMUGuestCPU.alwaysOn { if let feature = map.registry.feature(named: name) { features.insert(feature) } }
        return ResolvedCPU(vendor: nil, features: features)
    }

    /// Under TCG, QEMU's dirty-page tracking can miss guest writes. When a pass clears a page's
    /// dirty bit, QEMU (7.2, as installed here) leaves in place the vCPU's TLB entries that let
    /// stores to that page skip the tracking; until that vCPU next flushes its TLB (a guest
    /// address-space switch, say), its writes to the page go unrecorded, and if the page was
    /// sent in between, the destination keeps the older contents. Measured with the test
    /// guest's `memcheck` mode (`Benchmarks/migration-integrity.py`, plain QEMU, 1 GiB, 32 MiB
    /// rewritten and checked): every damaged move (checksum mismatches, guest kernel oopses) had
    /// made 4 or more passes, with or without XSAVE in the guest CPU; no move of 3 passes (the
    /// first, one while the guest runs, and the last with it stopped: nothing is sent between
    /// the middle pass and the stop) was damaged. Moves with the guest paused throughout were
    /// all intact. So under TCG a live migration is exact up to 3 passes, provided the first
    /// pass, which clears every dirty bit, runs with the guest paused (see
    /// ``QEMUVirtualMachine/migrate(to:parameters:)``).
    ///
    /// The cause is in QEMU's bulk sync of the migration bitmap, which clears the bits without
    /// resetting the TLB entries (only the page-by-page path did). QEMU 9.0 resets them there too
    /// (upstream commit 03bfc2188f, "physmem: Fix migration dirty bitmap coherency with TCG
    /// memory access"), and its author reported further lost-tracking races under stress. So
    /// the limit holds for every QEMU under TCG until a newer one has been measured.
    public var exactLiveMigrationPasses: Int? { accelerator == .tcg ? 3 : nil }

    /// Checks a VM's definition before anything is started.
    public func validate(_ configuration: VMConfiguration) throws {
        if configuration.memoryMiB < Self.minimumMemoryMiB {
            throw HypervisorError.invalidConfiguration(
                "memory \(configuration.memoryMiB) MiB is too small (at least \(Self.minimumMemoryMiB) MiB)")
        }
        if !(1...255).contains(configuration.vcpus) {
            throw HypervisorError.invalidConfiguration("\(configuration.vcpus) vCPUs (expected 1 to 255)")
        }
        if configuration.kernel == nil && configuration.disk == nil {
            throw HypervisorError.invalidConfiguration("nothing to boot: give a kernel or a disk image")
        }
        for (path, what) in [(configuration.kernel, "kernel"), (configuration.initrd, "initrd"), (configuration.disk, "disk image")] {
            guard let path else { continue }
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else {
                throw HypervisorError.badFile(path: path, reason: "\(what) not found")
            }
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw HypervisorError.badFile(path: path, reason: "\(what) is not readable")
            }
        }
        let offer = QEMUGuestCPU.offer(capabilities, map: map)
        let missing = configuration.cpu.features.subtracting(offer)
            .subtracting(FeatureSet(indices: QEMUGuestCPU.alwaysOn.compactMap { map.registry.feature(named: $0)?.index }))
        let controllable = map.registry.features(in: missing).filter {
            QEMUGuestCPU.propertyName(of: $0, in: capabilities) != nil
        }
        if !controllable.isEmpty { throw HypervisorError.cpuNotOffered(missing: controllable.map(\.name)) }
    }

    /// The command line for a VM (also what `tern run --dry-run` prints).
    public func commandLine(_ configuration: VMConfiguration, files: VMFiles, console: QEMUCommandLine.Console)
        -> QEMUCommandLine
    {
        QEMUCommandLine(
            binary: binary, configuration: configuration,
            cpu: QEMUGuestCPU(configuration.cpu, map: map, capabilities: capabilities), accelerator: accelerator, files: files,
            console: console)
    }

    public func start(_ configuration: VMConfiguration, files: VMFiles) async throws -> any VirtualMachineInstance {
        try await start(configuration, files: files, console: .socket)
    }

    /// Starts a VM paused, checks the guest got exactly the CPU asked for, then lets it run.
    ///
    /// With `.socket` QEMU runs on its own (``QEMUProcess``); with `.terminal` it is a child
    /// with the console on this terminal.
    public func start(_ configuration: VMConfiguration, files: VMFiles, console: QEMUCommandLine.Console) async throws
        -> QEMUVirtualMachine
    {
        let clock = ContinuousClock()
        let begin = clock.now
        var timings = QEMUStartTimings()
        let vm = try await launch(configuration, files: files, console: console, extra: ["-S"]) { phase in
            switch phase {
            case .spawned: timings.spawned = clock.now - begin
            case .controlReady: timings.controlReady = clock.now - begin
            }
        }
        do {
            try await vm.verifyCPU(configuration.cpu, capabilities: capabilities)
            timings.verified = clock.now - begin
            try await vm.resume()
            timings.running = clock.now - begin
            vm.startTimings = timings
        } catch {
            try? await vm.destroy()
            throw error
        }
        return vm
    }

    public func startIncoming(
        _ configuration: VMConfiguration, files: VMFiles, address: MigrationAddress, parameters: MigrationParameters,
        autostart: Bool
    ) async throws -> (any VirtualMachineInstance, MigrationAddress) {
        let vm = try await launch(
            configuration, files: files, console: .socket, extra: ["-incoming", "defer"] + (autostart ? [] : ["-S"])) { _ in }
        do {
            // The CPU check and the set-up to receive go to QEMU together; nobody is told where
            // to send before both are done.
            async let verified: Void = vm.verifyCPU(configuration.cpu, capabilities: capabilities)
            let listening = try await vm.receive(at: address, parameters: parameters)
            try await verified
            return (vm, listening)
        } catch {
            try? await vm.destroy()
            throw error
        }
    }

    enum LaunchPhase { case spawned, controlReady }

    /// Validates, spawns QEMU (see ``QEMUProcess`` for `.socket`; for `.terminal`, a child
    /// holding this terminal) with `extra` arguments, and connects to its control socket.
    private func launch(
        _ configuration: VMConfiguration, files: VMFiles, console: QEMUCommandLine.Console, extra: [String],
        phase: (LaunchPhase) -> Void
    ) async throws -> QEMUVirtualMachine {
        try validate(configuration)
        try FileManager.default.createDirectory(at: files.directory, withIntermediateDirectories: true)
        for file in [files.controlSocket, files.consoleSocket] { try? FileManager.default.removeItem(at: file) }
        var command = commandLine(configuration, files: files, console: console)
        command.arguments += extra
        let pid: Int32
        let ended: @Sendable () -> Bool
        var child: Process?
        var spawned: QEMUProcess?
        switch console {
        case .socket:
            let process = try await QEMUProcess.spawn(command, log: files.hypervisorLog)
            pid = process.pid
            spawned = process
            ended = { process.ended != nil }
        case .terminal:
            // In the foreground QEMU is this process's child with the console on the terminal;
            // its own messages go to a file.
            let process = Process()
            process.executableURL = URL(fileURLWithPath: command.binary)
            process.arguments = command.arguments
            _ = FileManager.default.createFile(atPath: files.hypervisorLog.path, contents: nil)
            let stderr = try FileHandle(forWritingTo: files.hypervisorLog)
            process.standardError = stderr
            do { try process.run() } catch { throw HypervisorError.notInstalled(command.binary) }
            try? stderr.close()
            pid = process.processIdentifier
            child = process
            ended = { !process.isRunning }
        }
        phase(.spawned)
        let client: QMPClient
        do {
            // A refused or closed connection may be QEMU failing: then it has ended, and said why.
            client = try await QEMUCapabilities.connectWhenReady(socket: files.controlSocket.path) {
                ended() ? "QEMU exited" : nil
            }
        } catch HypervisorError.startFailed {
            throw HypervisorError.startFailed(hypervisorMessages(files))
        } catch {
            kill(pid, SIGKILL)
            throw error
        }
        phase(.controlReady)
        return QEMUVirtualMachine(name: configuration.name, pid: pid, client: client, files: files, map: map, child: child,
            process: spawned, exactPasses: exactLiveMigrationPasses)
    }

    public func attach(_ configuration: VMConfiguration, files: VMFiles, pid: Int32) async throws -> any VirtualMachineInstance {
        guard Self.isHypervisor(pid, of: files) else { throw HypervisorError.notRunning(configuration.name) }
        let client = try await QMPClient.connect(path: files.controlSocket.path)
        let vm = QEMUVirtualMachine(name: configuration.name, pid: pid, client: client, files: files, map: map, child: nil,
            process: nil, exactPasses: exactLiveMigrationPasses)
        await vm.endAnyYield()
        return vm
    }

    public func processes(of files: VMFiles) -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init).filter {
            Self.isHypervisor($0, of: files)
        }
    }

    public func isRunning(_ pid: Int32, for files: VMFiles) -> Bool { Self.isHypervisor(pid, of: files) }

    /// Whether `pid` is a running QEMU serving `files`: its command line gives QMP the VM's
    /// control socket (as ``QEMUCommandLine`` does), so neither a reused pid nor another
    /// program naming the socket is taken for it.
    static func isHypervisor(_ pid: Int32, of files: VMFiles) -> Bool {
        guard QEMUVirtualMachine.isAlive(pid),
            let cmdline = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)
        else { return false }
        return cmdline.contains("-qmp\u{0}unix:\(files.controlSocket.path),")
    }

    /// What QEMU wrote to its log, for error messages.
    private func hypervisorMessages(_ files: VMFiles) -> String {
        let text = (try? String(contentsOf: files.hypervisorLog, encoding: .utf8)) ?? ""
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return trimmed.isEmpty ? "QEMU exited without a message" : trimmed
    }
}

/// How long each phase of starting a VM took, measured from the start request.
public struct QEMUStartTimings: Sendable, Equatable {
    /// QEMU launched (its process started).
    public var spawned: Duration = .zero
    /// QMP answered (QEMU's own set-up, paid by any way of starting QEMU).
    public var controlReady: Duration = .zero
    /// The guest's CPUID was read back and compared.
    public var verified: Duration = .zero
    /// The vCPUs run.
    public var running: Duration = .zero

    /// What Tern adds to a bare QEMU start: its work before launching QEMU plus the check and
    /// the `cont` after QMP is ready.
    public var ternOverhead: Duration { spawned + (running - controlReady) }
}
