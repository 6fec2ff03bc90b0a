import CTernHost
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A `ternd` started for a test, with its own state directory and socket.
public final class TestDaemon: @unchecked Sendable {
    public let stateDirectory: URL
    public let hostCPU: String?
    /// More `ternd` arguments (e.g. `--listen`).
    public let extraArguments: [String]
    /// A command that runs `ternd` (its path and arguments follow), e.g. one that puts it in a
    /// mount namespace of its own; empty: `ternd` is run directly.
    public let launcher: [String]
    public var socket: String { stateDirectory.appendingPathComponent("ternd.sock").path }
    private var process: Process?

    /// Starts a daemon in a new temporary state directory (or `stateDirectory`).
    public init(hostCPU: String? = nil, stateDirectory: URL? = nil, extraArguments: [String] = [], launcher: [String] = []) throws {
        self.stateDirectory = stateDirectory
            ?? FileManager.default.temporaryDirectory.appendingPathComponent("ternd-test-\(UUID().uuidString.prefix(8))")
        self.hostCPU = hostCPU
        self.extraArguments = extraArguments
        self.launcher = launcher
        try start()
    }

    /// Starts (or restarts) the daemon process and waits until it answers.
    public func start() throws {
        let process = Process()
        let ternd = packageRoot.appendingPathComponent(".build/debug/ternd")
        let arguments = ["--state-dir", stateDirectory.path] + (hostCPU.map { ["--host-cpu", $0] } ?? []) + extraArguments
        if let command = launcher.first {
            process.executableURL = URL(fileURLWithPath: command)
            process.arguments = launcher.dropFirst() + [ternd.path] + arguments
        } else {
            process.executableURL = ternd
            process.arguments = arguments
        }
        process.currentDirectoryURL = packageRoot
        let log = stateDirectory.appendingPathComponent("ternd.log")
        try FileManager.default.createDirectory(at: stateDirectory, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        handle.seekToEndOfFile()
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if try tern("list") .status == 0 { return }
            if !process.isRunning { throw DaemonError(message: "ternd exited: \(self.log)") }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw DaemonError(message: "ternd did not answer within 60 s: \(self.log)")
    }

    /// The daemon's process (to stop and continue it).
    public var pid: Int32? { process?.processIdentifier }

    /// Ends the daemon abruptly (SIGKILL): its VMs keep running.
    public func kill() {
        guard let process, process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Ends the daemon and every QEMU it started, and removes its state.
    public func tearDown() {
        if let process, process.isRunning {
            Glibc.kill(process.processIdentifier, SIGCONT)  // a stopped one would never see SIGTERM
            process.terminate()
            process.waitUntilExit()
        }
        // Daemonized QEMUs outlive the daemon: end those whose files are in our state directory.
        if let pids = try? FileManager.default.contentsOfDirectory(atPath: "/proc") {
            for pid in pids.compactMap({ Int32($0) }) {
                if let cmdline = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
                    cmdline.contains(stateDirectory.path), cmdline.contains("qemu-system")
                {
                    Glibc.kill(pid, SIGKILL)
                }
            }
        }
        try? FileManager.default.removeItem(at: stateDirectory)
    }

    /// The daemon's log so far.
    public var log: String { (try? String(contentsOf: stateDirectory.appendingPathComponent("ternd.log"), encoding: .utf8)) ?? "" }

    /// Runs `tern` against this daemon.
    public func tern(_ arguments: String..., stdin: String? = nil, timeout: Double = 120) throws -> ProgramRun {
        try tern(arguments: arguments, stdin: stdin, timeout: timeout)
    }

    public func tern(arguments: [String], stdin: String? = nil, timeout: Double = 120) throws -> ProgramRun {
        try TernTestSupport.tern(arguments: arguments + ["--connect", socket], stdin: stdin, timeout: timeout)
    }

    /// Domain XML for the test guest.
    public static func domainXML(
        name: String, mode: String = "counter", memoryMiB: Int = 256, vcpus: Int = 1, cpu: String = "", kernel: String? = nil
    ) -> String {
        """
        <domain type='qemu'>
          <name>\(name)</name>
          <memory unit='MiB'>\(memoryMiB)</memory>
          <vcpu>\(vcpus)</vcpu>
          <os>
            <type arch='x86_64' machine='q35'>hvm</type>
            <kernel>\(kernel ?? TestGuest.kernel)</kernel>
            <initrd>\(TestGuest.initrd)</initrd>
            <cmdline>\(TestGuest.cmdline(mode))</cmdline>
          </os>
          \(cpu)
        </domain>
        """
    }

    /// The VM's console log.
    public func consoleLog(_ name: String) -> String {
        (try? String(contentsOf: stateDirectory.appendingPathComponent("vms/\(name)/console.log"), encoding: .utf8)) ?? ""
    }

    /// Waits until the VM's console log contains `text`.
    public func waitForConsole(_ name: String, _ text: String, timeout: Double = 60) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if consoleLog(name).contains(text) { return true }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return false
    }

    /// The pid of a VM's hypervisor process, as `dominfo --json` gives it.
    public func hypervisorPID(_ name: String) throws -> Int32? {
        try tern("dominfo", name, "--json").out.split(separator: "\n").first { $0.contains("\"pid\"") }
            .flatMap { Int32($0.filter(\.isNumber)) }
    }

    /// The highest `TERN-GUEST: counter N` the VM printed so far.
    public func lastCounter(_ name: String) -> Int {
        TestGuest.numbers(after: "counter ", in: consoleLog(name)).max() ?? 0
    }
}

public struct DaemonError: Error, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick), for a daemon's `--listen`.
public func freeTCPPort() throws -> Int {
    let port = tern_tcp_free_port()
    guard port > 0 else { throw DaemonError(message: "no free TCP port: errno \(errno)") }
    return Int(port)
}
