import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import TernAPI

/// Which daemon a command talks to.
struct ConnectOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "The ternd to talk to: its unix socket path or tcp://host:port (default: $TERN_CONNECT or /var/lib/tern/ternd.sock).",
            valueName: "uri"))
    var connect: String?

    func client() throws -> APIClient {
        let text = connect ?? ProcessInfo.processInfo.environment["TERN_CONNECT"] ?? "/var/lib/tern/ternd.sock"
        return APIClient(endpoint: try APIClient.Endpoint(text))
    }
}

/// Percent-escapes a VM name for a URL path.
func path(_ name: String, _ action: String? = nil) -> String {
    let escaped = name.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? name
    return "/vms/\(escaped)" + (action.map { "/\($0)" } ?? "")
}

struct Define: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "define", abstract: "Define a VM from libvirt domain XML (like 'virsh define').")
    @Argument(help: ArgumentHelp("The domain XML ('-' for standard input).", valueName: "file")) var file: String
    @OptionGroup var connection: ConnectOptions

    func run() async throws {
        let info: VMInfo = try await connection.client().post("/vms", body: DefineRequest(xml: readInput(file)))
        print("Domain '\(info.name)' defined from \(file)")
    }
}

/// The commands that act on one VM by name and print one line.
protocol VMAction: AsyncParsableCommand {
    var name: String { get }
    var connection: ConnectOptions { get }
    /// The API action, which is also the subcommand's name.
    static var action: String { get }
    static var done: String { get }
}

extension VMAction {
    func run() async throws {
        let info: VMInfo = try await connection.client().post(path(name, Self.action))
        print("Domain '\(info.name)' \(Self.done)")
    }
}

struct Start: VMAction {
    static let configuration = CommandConfiguration(
        commandName: action,
        abstract: "Start a defined VM; its CPU is computed on this host and checked before QEMU starts.")
    static let action = "start", done = "started"
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var connection: ConnectOptions
}

struct Shutdown: VMAction {
    static let configuration = CommandConfiguration(
        commandName: action, abstract: "Ask a VM's guest to power off (ACPI power button).")
    static let action = "shutdown", done = "is being shutdown"
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var connection: ConnectOptions
}

struct Destroy: VMAction {
    static let configuration = CommandConfiguration(commandName: action, abstract: "End a VM at once.")
    static let action = "destroy", done = "destroyed"
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var connection: ConnectOptions
}

struct Suspend: VMAction {
    static let configuration = CommandConfiguration(commandName: action, abstract: "Pause a VM's vCPUs.")
    static let action = "suspend", done = "suspended"
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var connection: ConnectOptions
}

struct Resume: VMAction {
    static let configuration = CommandConfiguration(commandName: action, abstract: "Resume a paused VM.")
    static let action = "resume", done = "resumed"
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var connection: ConnectOptions
}

struct Undefine: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "undefine", abstract: "Remove a shut-off VM's definition.")
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var connection: ConnectOptions

    func run() async throws {
        let info: VMInfo = try await connection.client().delete(path(name))
        print("Domain '\(info.name)' has been undefined")
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the VMs defined on a host.")
    @OptionGroup var connection: ConnectOptions
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let vms: [VMInfo] = try await connection.client().get("/vms")
        if json { return try printJSON(vms) }
        print(" Name                 State      vCPUs  Memory    CPU")
        print("-------------------------------------------------------------------")
        for vm in vms {
            let cpu = vm.cpu.map { "\($0.mode)" + ($0.model.map { " \($0)" } ?? "") + " (\($0.features.count) features)" } ?? "-"
            print(
                " " + vm.name.padding(toLength: 21, withPad: " ", startingAt: 0) + vm.state.padding(toLength: 11, withPad: " ", startingAt: 0)
                    + String(vm.vcpus).padding(toLength: 7, withPad: " ", startingAt: 0)
                    + "\(vm.memoryMiB) MiB".padding(toLength: 10, withPad: " ", startingAt: 0) + cpu)
        }
    }
}

struct DomInfo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dominfo", abstract: "Show a VM's state and the CPU it runs with.")
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var connection: ConnectOptions
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let vm: VMInfo = try await connection.client().get(path(name))
        if json { return try printJSON(vm) }
        func row(_ key: String, _ value: String) { print((key + ":").padding(toLength: 16, withPad: " ", startingAt: 0) + value) }
        row("Name", vm.name)
        row("State", vm.state)
        if let reason = vm.reason { row("Reason", reason) }
        row("CPU(s)", "\(vm.vcpus)")
        row("Max memory", "\(vm.memoryMiB * 1024) KiB")
        if let pid = vm.pid { row("PID", "\(pid)") }
        if let cpu = vm.cpu {
            row("CPU mode", cpu.mode)
            if let model = cpu.model { row("CPU model", model) }
            row("CPU vendor", cpu.vendor ?? "-")
            if let family = cpu.family { row("CPU signature", "family \(family) model \(cpu.modelNumber ?? 0) stepping \(cpu.stepping ?? 0)") }
            row("CPU features", "\(cpu.features.count): " + cpu.features.joined(separator: " "))
            for note in cpu.notHonoured { row("Not honoured", note) }
        }
        row("Console log", vm.consoleLog)
        if let lines = vm.lastConsoleLines, !lines.isEmpty {
            print("Last console lines:")
            for line in lines { print("  " + line) }
        }
    }
}

struct Console: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console",
        abstract: "Attach to a VM's serial console (Ctrl-] detaches), or print its log with --log.")
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var connection: ConnectOptions
    @Flag(help: "Print the console log's last lines instead of attaching.") var log = false
    @Option(help: "How many lines --log prints.") var lines = 50

    func validate() throws {
        if lines < 0 { throw ValidationError("--lines must not be negative") }
    }

    func run() async throws {
        let client = try connection.client()
        if log {
            let text: ConsoleText = try await client.get(path(name, "console") + "?lines=\(lines)")
            for line in text.lines { print(line) }
            return
        }
        let vm: VMInfo = try await client.get(path(name))
        guard vm.state == "running" || vm.state == "paused" else {
            throw ValidationError("VM '\(name)' is \(vm.state); use --log to read its console log")
        }
        printError("Connected to domain '\(name)'\nEscape character is ^]")
        try await attach(socketPath: vm.consoleSocket)
    }

    /// Copies the console socket to standard output and standard input to the socket until
    /// Ctrl-] or the socket closes.
    private func attach(socketPath: String) async throws {
        let terminal = RawTerminal()
        defer { terminal.restore() }
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(unixDomainSocketPath: socketPath) { channel in
                channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
            }
        try await channel.executeThenClose { inbound, outbound in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for try await chunk in inbound { FileHandle.standardOutput.write(Data(chunk.readableBytesView)) }
                }
                group.addTask {
                    let input = AsyncStream<Data> { continuation in
                        Thread.detachNewThread {
                            while true {
                                let data = FileHandle.standardInput.availableData
                                if data.isEmpty || data.contains(0x1d) {
                                    continuation.finish()
                                    return
                                }
                                continuation.yield(data)
                            }
                        }
                    }
                    for await data in input { try await outbound.write(ByteBuffer(bytes: data)) }
                }
                try await group.next()
                group.cancelAll()
            }
        }
    }
}

/// Standard input in raw mode while a console is attached, when it is a terminal: keys reach the
/// guest as they are typed (Ctrl-] included, which detaches), not a line at a time with a local
/// echo. ``restore()`` puts the terminal back as it was.
struct RawTerminal {
    private var saved = termios()
    private let active: Bool

    init() {
        var saved = termios()
        active = isatty(STDIN_FILENO) == 1 && tcgetattr(STDIN_FILENO, &saved) == 0
        self.saved = saved
        guard active else { return }
        var raw = saved
        cfmakeraw(&raw)
        tcsetattr(STDIN_FILENO, TCSANOW, &raw)
    }

    func restore() {
        guard active else { return }
        var saved = saved
        tcsetattr(STDIN_FILENO, TCSANOW, &saved)
    }
}
