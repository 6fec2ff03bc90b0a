import Foundation
import NIOConcurrencyHelpers
import TernCPU
import TernHypervisor

#if canImport(Glibc)
import Glibc
#endif

/// One VM run by QEMU, driven over QMP.
public final class QEMUVirtualMachine: VirtualMachineInstance {
    public let name: String
    public let pid: Int32
    public let files: VMFiles
    let client: QMPClient
    let map: CPUMap
    /// The QEMU process when it is this process's child (`tern run`); nil when daemonized.
    let child: Process?
    /// The last event that says why the VM stops: SHUTDOWN's reason, or GUEST_PANICKED.
    private let ending = NIOLockedValueBox<String?>(nil)
    private let timings = NIOLockedValueBox(QEMUStartTimings())
    /// How long starting this VM took, phase by phase.
    public var startTimings: QEMUStartTimings {
        get { timings.withLockedValue { $0 } }
        set { timings.withLockedValue { $0 = newValue } }
    }
    private let eventTask: Task<Void, Never>

    init(name: String, pid: Int32, client: QMPClient, files: VMFiles, map: CPUMap, child: Process?) {
        self.name = name
        self.pid = pid
        self.client = client
        self.files = files
        self.map = map
        self.child = child
        let ending = self.ending
        eventTask = Task {
            for await event in client.events {
                switch event.name {
                case "GUEST_PANICKED": ending.withLockedValue { $0 = "panicked" }
                case "SHUTDOWN":
                    let reason = event.data?["reason"]?.string ?? "unknown"
                    ending.withLockedValue { if $0 != "panicked" { $0 = reason } }
                default: continue
                }
            }
        }
    }

    deinit { eventTask.cancel() }

    public func runState() async throws -> VMRunState {
        let status = try await client.execute("query-status")
        switch status["status"]?.string {
        case "running": return .running
        case "guest-panicked", "internal-error": return .crashed
        case "shutdown": return .shutoff
        default: return .paused
        }
    }

    public func pause() async throws { try await client.execute("stop") }

    public func resume() async throws { try await client.execute("cont") }

    public func shutdown() async throws { try await client.execute("system_powerdown") }

    public func destroy() async throws {
        ending.withLockedValue { if $0 == nil { $0 = "destroyed" } }
        _ = try? await client.execute("quit")
        try? await Task.sleep(for: .milliseconds(50))
        if kill(pid, 0) == 0 { kill(pid, SIGKILL) }
    }

    public func guestFeatures() async throws -> [String] {
        map.registry.names(of: try await readGuestFeatures())
    }

    func readGuestFeatures() async throws -> FeatureSet {
        let cpus = try await client.execute("query-cpus-fast")
        guard let path = cpus.array?.first?["qom-path"]?.string else {
            throw HypervisorError.commandFailed(command: "query-cpus-fast", message: "no vCPU listed")
        }
        let words = try await client.execute("qom-get", ["path": .string(path), "property": "feature-words"])
        return QEMUGuestCPU.features(fromFeatureWords: words.array ?? [], map: map)
    }

    /// Reads back the running vCPU's CPUID feature words and compares them with `expected`,
    /// over the features QEMU controls.
    func verifyCPU(_ expected: GuestCPU, capabilities: QEMUCapabilities) async throws {
        let actual = try await readGuestFeatures()
        var wanted = expected.features
        for name in QEMUGuestCPU.alwaysOn { if let feature = map.registry.feature(named: name) { wanted.insert(feature) } }
        let checked = map.registry.features.filter {
            $0.isCPUID && QEMUGuestCPU.propertyName(of: $0, in: capabilities) != nil
        }
        let scope = FeatureSet(indices: checked.map(\.index))
        let missing = wanted.intersection(scope).subtracting(actual)
        let unexpected = actual.intersection(scope).subtracting(wanted)
        if !missing.isEmpty || !unexpected.isEmpty {
            throw HypervisorError.cpuMismatch(
                missingInGuest: map.registry.names(of: missing), unexpectedInGuest: map.registry.names(of: unexpected))
        }
    }

    public func waitForExit() async -> VMExit {
        if let child {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                DispatchQueue.global().async {
                    child.waitUntilExit()
                    continuation.resume()
                }
            }
        } else {
            while kill(pid, 0) == 0 { try? await Task.sleep(for: .milliseconds(50)) }
        }
        // Give the event stream a moment to deliver what QEMU said last.
        try? await Task.sleep(for: .milliseconds(20))
        switch ending.withLockedValue({ $0 }) {
        case "panicked": return .panicked
        case "guest-shutdown", "host-qmp-quit": return .poweredOff
        case "destroyed": return .killed(signal: SIGKILL)
        case let reason?: return .failed("QEMU stopped: \(reason)")
        case nil:
            if let child, child.terminationReason == .uncaughtSignal { return .killed(signal: child.terminationStatus) }
            if Self.consoleShowsPanic(files.consoleLog) { return .panicked }
            return .killed(signal: SIGKILL)
        }
    }

    /// True when the console log's last lines show a kernel panic.
    public static func consoleShowsPanic(_ log: URL) -> Bool {
        lastLines(of: log, count: 40).contains { $0.contains("Kernel panic - not syncing") }
    }

    /// The last `count` lines of a file (for crash reports).
    public static func lastLines(of file: URL, count: Int) -> [String] {
        guard let handle = try? FileHandle(forReadingFrom: file) else { return [] }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        let start = size > 16384 ? size - 16384 : 0
        try? handle.seek(toOffset: start)
        let data = (try? handle.readToEnd()) ?? Data()
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: CharacterSet(charactersIn: "\r")) }
        return Array(lines.suffix(count))
    }
}
