import ArgumentParser
import Foundation
import TernCPU
import TernHost
import TernHypervisor
import TernQEMU

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run one VM in the foreground with its console on this terminal.",
        discussion: """
            The guest CPU is computed as for 'tern cpuid' and checked against what this host \
            (or --host) can offer before QEMU starts; QEMU is then told every feature \
            explicitly and the running guest's CPUID is read back and compared. Press Ctrl-A X \
            to end the VM. Exit status: 0 when the guest powered off, 1 otherwise.
            """)

    @Option(help: ArgumentHelp("The Linux kernel to boot.", valueName: "file")) var kernel: String?
    @Option(help: ArgumentHelp("The initial ramdisk.", valueName: "file")) var initrd: String?
    @Option(help: ArgumentHelp("A raw disk image (virtio).", valueName: "file")) var disk: String?
    @Option(help: "The kernel command line.") var cmdline = "console=ttyS0"
    @Option(help: "Guest memory (e.g. 512M, 1G; a plain number is MiB).") var memory = "512M"
    @Option(help: "Number of vCPUs.") var cpus = 1
    @Option(help: "The VM's name.") var name = "tern-run"
    @Option(
        help: ArgumentHelp(
            "The memory balloon, as <memballoon model=…> in a domain definition: virtio (with free page reporting) or none.",
            valueName: "model"))
    var memballoon = "virtio"
    @Flag(help: "Print the QEMU command line instead of running it.") var dryRun = false
    @Flag(help: "Print the guest's CPU (vendor and features) on standard error before it boots.") var showCPU = false
    @Flag(help: "Print how long each phase of the start took on standard error.") var timing = false
    @OptionGroup var guest: GuestCPUOptions
    @OptionGroup var map: MapOptions
    @OptionGroup var host: HostOptions

    func validate() throws {
        guard ["virtio", "none"].contains(memballoon) else {
            throw ValidationError("--memballoon '\(memballoon)' is not a balloon model (virtio or none)")
        }
    }

    func run() async throws {
        let clock = ContinuousClock()
        let begin = clock.now
        let cpuMap = try map.load()
        let mapLoaded = clock.now - begin
        let (caps, hypervisor) = try await host.capabilitiesWithHypervisor(map: cpuMap)
        let hostProbed = clock.now - begin
        guard let offer = caps.guestOffer else { throw ValidationError("no guest offer") }
        let hypervisorOffer = try await hypervisor.hostOffer().features
        let cpu = try cpuMap.guestCPU(guest.config(map: cpuMap, hypervisorOffer: hypervisorOffer), host: offer)
        let configuration = VMConfiguration(
            name: name, memoryMiB: try parseMemory(memory), vcpus: cpus, kernel: kernel, initrd: initrd, cmdline: cmdline,
            disk: disk, cpu: cpu, memoryBalloon: memballoon == "none" ? nil : MemoryBalloon())
        if showCPU {
            printError("tern: guest CPU: vendor=\(cpu.vendor ?? "-") model=\(cpu.model ?? "-") features=\(cpuMap.registry.names(of: cpu.features).joined(separator: " "))")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tern-run-\(getpid())")
        let files = VMFiles(directory: directory)
        if dryRun {
            try hypervisor.validate(configuration)
            let command = hypervisor.commandLine(configuration, files: files, console: .terminal)
            print(([command.binary] + command.arguments).map(shellQuote).joined(separator: " "))
            return
        }
        defer { try? FileManager.default.removeItem(at: directory) }
        let prepared = clock.now - begin
        let vm = try await hypervisor.start(configuration, files: files, console: .terminal)
        // Ended by a signal, tern ends its VM too: a QEMU left behind would go on holding the
        // terminal (and whatever reads tern's output) with nobody to stop it.
        let forwarding = SignalForwarding(signals: [SIGTERM, SIGHUP, SIGINT]) { Task { try? await vm.destroy() } }
        defer { forwarding.cancel() }
        if timing {
            let t = vm.startTimings
            printError(
                "tern: timing: map=\(ms(mapLoaded)) host=\(ms(hostProbed)) prepare=\(ms(prepared)) spawn=\(ms(t.spawned)) qmp-ready=\(ms(t.controlReady)) "
                    + "cpu-verified=\(ms(t.verified)) running=\(ms(t.running)) tern-overhead=\(ms(prepared + t.ternOverhead))")
        }
        let exit = await vm.waitForExit()
        if let number = forwarding.received {
            printError("tern: VM '\(name)' ended: tern received signal \(number)")
            throw ExitCode(1)
        }
        switch exit {
        case .poweredOff:
            printError("tern: VM '\(name)' powered off")
        case .panicked:
            printError("tern: VM '\(name)' crashed: the guest kernel panicked")
            throw ExitCode(1)
        case .killed(let signal):
            printError("tern: VM '\(name)' was killed (signal \(signal))")
            throw ExitCode(1)
        case .failed(let message):
            printError("tern: VM '\(name)' stopped: \(message)")
            throw ExitCode(1)
        }
    }
}

/// Reads a memory size: `512M`, `1G`, `2048` (MiB), `524288K`.
func parseMemory(_ text: String) throws -> Int {
    let trimmed = text.trimmingCharacters(in: .whitespaces).uppercased()
    let unit = trimmed.last.flatMap { "KMGT".contains($0) ? $0 : nil }
    let digits = unit == nil ? trimmed : String(trimmed.dropLast())
    guard let value = Int(digits), value > 0 else {
        throw ValidationError("invalid memory size '\(text)' (expected e.g. 512M or 1G)")
    }
    switch unit {
    case "K": return value / 1024
    case "G": return value * 1024
    case "T": return value * 1024 * 1024
    default: return value
    }
}

/// Quotes a word for a POSIX shell when it needs it.
func shellQuote(_ word: String) -> String {
    if !word.isEmpty, word.allSatisfy({ $0.isLetter || $0.isNumber || "-_./=:,+@%".contains($0) }) { return word }
    return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// Turns the given signals into an action (ending the foreground VM) instead of letting them
/// end tern while its VM lives on. (QEMU is told over QMP: a child spawned from a worker thread
/// inherits that thread's blocked signals, so a signal sent to it may never arrive.)
final class SignalForwarding {
    private let sources: [any DispatchSourceSignal]
    private let first = FirstSignal()
    /// The first of the signals that arrived, if one did.
    var received: Int32? { first.value }

    init(signals: [Int32], action: @escaping @Sendable () -> Void) {
        let first = self.first
        sources = signals.map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                first.record(number)
                action()
            }
            source.resume()
            return source
        }
    }

    func cancel() {
        for source in sources { source.cancel() }
    }
}

private final class FirstSignal: @unchecked Sendable {
    private let lock = NSLock()
    private var number: Int32?
    var value: Int32? { lock.withLock { number } }
    func record(_ signal: Int32) { lock.withLock { if number == nil { number = signal } } }
}
