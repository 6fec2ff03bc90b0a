import Foundation

/// The package root (found from this file's location).
public let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// The result of running a program.
public struct ProgramRun: Sendable {
    public var status: Int32
    public var out: String
    public var err: String

    /// Lines the test guest printed (`TERN-GUEST: …` markers, prefix and `\r` removed).
    public var guestLines: [String] {
        out.split(whereSeparator: \.isNewline).compactMap { line in
            guard let range = line.range(of: "TERN-GUEST: ") else { return nil }
            return String(line[range.upperBound...]).trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
        }
    }

    /// The value of a `TERN-GUEST: key=value` marker.
    public func guestValue(_ key: String) -> String? {
        guestLines.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
    }
}

/// Runs `executable` with `arguments` from the package root, feeding `stdin`, and waits at most
/// `timeout` seconds (then kills it and reports status -1).
public func runProgram(
    _ executable: URL, _ arguments: [String], stdin: String? = nil, timeout: Double = 120, environment: [String: String]? = nil
) throws -> ProgramRun {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    process.currentDirectoryURL = packageRoot
    if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    let out = Pipe(), err = Pipe(), input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    try process.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try input.fileHandleForWriting.close()
    let timer = DispatchWorkItem {
        guard process.isRunning else { return }
        // Its children first (a QEMU it started would keep the output pipes open), then it.
        let children = childProcesses(of: process.processIdentifier)
        process.terminate()
        Thread.sleep(forTimeInterval: 2)
        for child in children { kill(child, SIGKILL) }
    }
    DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: timer)
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    timer.cancel()
    return ProgramRun(
        status: process.terminationReason == .uncaughtSignal ? -1 : process.terminationStatus,
        out: String(decoding: outData, as: UTF8.self), err: String(decoding: errData, as: UTF8.self))
}

/// The processes whose parent is `pid`.
func childProcesses(of pid: Int32) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { entry -> Int32? in
        guard let child = Int32(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
            let close = stat.range(of: ")", options: .backwards)
        else { return nil }
        // After "(comm)": state, then the parent's pid.
        let fields = stat[close.upperBound...].split(separator: " ")
        return fields.count > 1 && Int32(fields[1]) == pid ? child : nil
    }
}

/// Runs the built `tern` CLI.
public func tern(_ arguments: String..., stdin: String? = nil, timeout: Double = 120) throws -> ProgramRun {
    try runProgram(packageRoot.appendingPathComponent(".build/debug/tern"), arguments, stdin: stdin, timeout: timeout)
}

/// Runs the built `tern` CLI with an argument array.
public func tern(arguments: [String], stdin: String? = nil, timeout: Double = 120) throws -> ProgramRun {
    try runProgram(packageRoot.appendingPathComponent(".build/debug/tern"), arguments, stdin: stdin, timeout: timeout)
}

/// The test guest: Debian's cloud kernel and a busybox initramfs, built by
/// `scripts/build-guest.sh` (once; it rebuilds only when its inputs change).
public enum TestGuest {
    /// The numbers the guest printed after `marker` (`"counter "`, `"memcheck pass "` …), in
    /// console order.
    public static func numbers(after marker: String, in text: String) -> [Int] {
        text.split(whereSeparator: \.isNewline).compactMap { line -> Int? in
            guard let range = line.range(of: "TERN-GUEST: \(marker)") else { return nil }
            return Int(line[range.upperBound...].prefix { $0.isNumber })
        }
    }

    public static let directory = packageRoot.appendingPathComponent(".build-guest")
    public static var kernel: String { directory.appendingPathComponent("vmlinuz").path }
    public static var initrd: String { directory.appendingPathComponent("initramfs.cpio.gz").path }

    /// Builds the guest if needed; throws with the script's output when it fails.
    public static func ensureBuilt() throws {
        let run = try runProgram(URL(fileURLWithPath: "/bin/sh"), [packageRoot.appendingPathComponent("scripts/build-guest.sh").path])
        if run.status != 0 { throw GuestBuildError(output: run.err + run.out) }
    }

    /// The kernel command line for a guest mode (`flags`, `counter`, `panic` …).
    public static func cmdline(_ mode: String) -> String { "console=ttyS0 quiet cryptomgr.notests tern.mode=\(mode)" }

    /// `tern run` arguments that boot the guest in `mode`.
    public static func runArguments(mode: String, memory: String = "256M", cpus: Int = 1) -> [String] {
        ["run", "--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline(mode), "--memory", memory, "--cpus", "\(cpus)"]
    }
}

public struct GuestBuildError: Error, CustomStringConvertible {
    public var output: String
    public var description: String { "scripts/build-guest.sh failed:\n\(output)" }
}

/// The recorded processors shipped with the tests.
public let cpuidDumps = "Tests/TernCPUTests/Fixtures/cpuid-dumps"
