import Foundation
import NIOConcurrencyHelpers
import Subprocess
import SystemPackage
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

    /// The shortest downtime limit allowed for a TCG guest whose CPU has XSAVE: QEMU's default.
    public static let shortestSafeTCGDowntimeMs = 300

    /// Under TCG, QEMU 7.2 loses some of a guest's memory writes during a live migration that
    /// runs many rounds, when the guest's CPU has XSAVE. Measured with the test guest's
    /// `memcheck` mode (1 GiB, 32 MiB rewritten and checked over and over) and a downtime limit
    /// of 20 ms: checksum mismatches or a guest kernel oops in each of 5 runs of 8–10 moves with
    /// plain QEMU (`Benchmarks/migration-integrity.py`), and at the third move in both runs
    /// through Tern; with XSAVE withheld (or `-cpu qemu64`), none in 20 moves; with QEMU's
    /// default limit (300 ms) through Tern, none in 16 moves. A short limit makes QEMU run more
    /// rounds, so it is refused for such a guest.
    public func liveMigrationHazard(guestFeatures: [String], parameters: MigrationParameters) -> String? {
        guard accelerator == .tcg, let limit = parameters.maxDowntimeMs, limit < Self.shortestSafeTCGDowntimeMs,
            guestFeatures.contains("xsave")
        else { return nil }
        return "under TCG, a live migration with a downtime limit below \(Self.shortestSafeTCGDowntimeMs) ms loses guest "
            + "memory writes for a guest whose CPU has XSAVE (QEMU \(capabilities.version)); use --max-downtime "
            + "\(Self.shortestSafeTCGDowntimeMs) or more, or none"
    }

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
    public func commandLine(_ configuration: VMConfiguration, files: VMFiles, console: QEMUCommandLine.Console, daemonize: Bool)
        -> QEMUCommandLine
    {
        QEMUCommandLine(
            binary: binary, configuration: configuration,
            cpu: QEMUGuestCPU(configuration.cpu, map: map, capabilities: capabilities), accelerator: accelerator, files: files,
            console: console, daemonize: daemonize)
    }

    public func start(_ configuration: VMConfiguration, files: VMFiles) async throws -> any VirtualMachineInstance {
        try await start(configuration, files: files, console: .socket)
    }

    /// Starts a VM paused, checks the guest got exactly the CPU asked for, then lets it run.
    ///
    /// With `.socket` QEMU daemonizes (it outlives this process); with `.terminal` it stays a
    /// child with the console on this terminal.
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
            try await vm.verifyCPU(configuration.cpu, capabilities: capabilities)
            let listening = try await vm.receive(at: address, parameters: parameters)
            return (vm, listening)
        } catch {
            try? await vm.destroy()
            throw error
        }
    }

    enum LaunchPhase { case spawned, controlReady }

    /// Validates, spawns QEMU (daemonized for `.socket`, a child for `.terminal`) with `extra`
    /// arguments, and connects to its control socket.
    private func launch(
        _ configuration: VMConfiguration, files: VMFiles, console: QEMUCommandLine.Console, extra: [String],
        phase: (LaunchPhase) -> Void
    ) async throws -> QEMUVirtualMachine {
        try validate(configuration)
        try FileManager.default.createDirectory(at: files.directory, withIntermediateDirectories: true)
        for file in [files.controlSocket, files.consoleSocket, files.pidFile] { try? FileManager.default.removeItem(at: file) }
        let daemonize = console == .socket
        var command = commandLine(configuration, files: files, console: console, daemonize: daemonize)
        command.arguments += extra
        let pid: Int32
        let process: Process?
        if daemonize {
            // The launching QEMU exits once the daemonized one is set up (0) or has failed
            // (non-zero, its message on stderr). swift-subprocess closes every other descriptor in
            // the child, so the daemon keeps none of ours open.
            let launch: ExecutionResult<Void, DiscardedOutput, StringOutput<UTF8>>
            do {
                launch = try await Subprocess.run(
                    .path(FilePath(command.binary)), arguments: Arguments(command.arguments), output: .discarded,
                    error: .string(limit: 65536))
            } catch {
                throw HypervisorError.startFailed("cannot run \(command.binary): \(error)")
            }
            guard launch.terminationStatus.isSuccess else {
                let message = (launch.standardError ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
                throw HypervisorError.startFailed(message.isEmpty ? "QEMU exited with \(launch.terminationStatus)" : message)
            }
            guard let text = try? String(contentsOf: files.pidFile, encoding: .utf8),
                let value = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
            else { throw HypervisorError.startFailed("QEMU wrote no pid file") }
            pid = value
            process = nil
        } else {
            // In the foreground QEMU is this process's child with the console on the terminal;
            // its own messages go to a file.
            let child = Process()
            child.executableURL = URL(fileURLWithPath: command.binary)
            child.arguments = command.arguments
            FileManager.default.createFile(atPath: files.hypervisorLog.path, contents: nil)
            let stderr = try FileHandle(forWritingTo: files.hypervisorLog)
            child.standardError = stderr
            do { try child.run() } catch { throw HypervisorError.notInstalled(command.binary) }
            try? stderr.close()
            pid = child.processIdentifier
            process = child
        }
        phase(.spawned)
        let client: QMPClient
        do {
            client = try await QEMUCapabilities.connectWhenReady(socket: files.controlSocket.path, pid: pid, process: process)
        } catch HypervisorError.startFailed {
            throw HypervisorError.startFailed(hypervisorMessages(files))
        } catch {
            kill(pid, SIGKILL)
            throw error
        }
        phase(.controlReady)
        return QEMUVirtualMachine(name: configuration.name, pid: pid, client: client, files: files, map: map, child: process)
    }

    public func attach(_ configuration: VMConfiguration, files: VMFiles, pid: Int32) async throws -> any VirtualMachineInstance {
        guard QEMUVirtualMachine.isAlive(pid),
            let cmdline = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
            cmdline.contains(files.controlSocket.path)
        else { throw HypervisorError.notRunning(configuration.name) }
        let client = try await QMPClient.connect(path: files.controlSocket.path)
        return QEMUVirtualMachine(name: configuration.name, pid: pid, client: client, files: files, map: map, child: nil)
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
    /// QEMU launched (for a daemonized QEMU: its launcher has exited).
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
