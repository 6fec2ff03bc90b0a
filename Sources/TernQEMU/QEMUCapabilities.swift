import Foundation

#if canImport(Glibc)
import Glibc
#endif
import TernHypervisor

/// What the installed QEMU can give a guest under one accelerator, as QEMU itself answers.
///
/// Gathered by starting `qemu-system-x86_64 -machine none` and asking QMP
/// `query-cpu-model-expansion` (type `full`) of `max` (TCG) or `host` (KVM), and
/// `query-cpu-definitions` for each model's unavailable features. Probing takes a QEMU start, so
/// the answer is cached on disk, keyed by the QEMU binary (path, size, modification time) and
/// the accelerator.
public struct QEMUCapabilities: Codable, Sendable, Equatable {
    /// QEMU's version string.
    public var version: String
    public var accelerator: Accelerator
    /// Every CPU property QEMU knows, with its value in the `max`/`host` expansion.
    public var properties: [String: Bool]
    /// For each CPU model QEMU defines, the features this accelerator cannot give.
    public var unavailableFeatures: [String: [String]]
    /// The cache key this was probed under.
    public var key: String

    /// The CPU properties that are on in the expansion.
    public var enabledProperties: Set<String> { Set(properties.filter(\.value).keys) }

    /// Probes (or reads from `cacheDirectory`) what `binary` offers under `accelerator`.
    ///
    /// - Throws: ``HypervisorError/notInstalled(_:)``, ``HypervisorError/startFailed(_:)``.
    public static func probe(binary: String, accelerator: Accelerator, cacheDirectory: URL?) async throws
        -> QEMUCapabilities
    {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: binary) else {
            throw HypervisorError.notInstalled(binary)
        }
        let size = (attributes[.size] as? NSNumber)?.intValue ?? 0
        let mtime = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        let key = "\(binary)|\(size)|\(Int(mtime))|\(accelerator.rawValue)|v1"
        let cacheFile = cacheDirectory?.appendingPathComponent("qemu-\(accelerator.rawValue).json")
        if let cacheFile, let data = try? Data(contentsOf: cacheFile),
            let cached = try? JSONDecoder().decode(QEMUCapabilities.self, from: data), cached.key == key
        {
            return cached
        }
        let result = try await runProbe(binary: binary, accelerator: accelerator, key: key)
        if let cacheFile, let cacheDirectory {
            try? FileManager.default.createDirectory(at: cacheDirectory, withIntermediateDirectories: true)
            if let data = try? JSONEncoder().encode(result) { try? data.write(to: cacheFile, options: .atomic) }
        }
        return result
    }

    private static func runProbe(binary: String, accelerator: Accelerator, key: String) async throws -> QEMUCapabilities {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tern-probe-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let socket = directory.appendingPathComponent("qmp.sock").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = [
            "-machine", "none", "-accel", accelerator.rawValue, "-nodefaults", "-display", "none", "-no-user-config",
            "-qmp", "unix:\(socket),server=on,wait=off",
        ]
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        do { try process.run() } catch { throw HypervisorError.notInstalled(binary) }
        defer { if process.isRunning { process.terminate() } }
        let client: QMPClient
        do {
            client = try await connectWhenReady(socket: socket) { process.isRunning ? nil : "QEMU exited" }
        } catch HypervisorError.startFailed {
            let message = String(decoding: stderr.fileHandleForReading.availableData, as: UTF8.self)
            throw HypervisorError.startFailed(message.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        defer { Task { await client.close() } }
        let versionInfo = try await client.execute("query-version")
        let qemu = versionInfo["qemu"]
        let version = "\(qemu?["major"]?.int ?? 0).\(qemu?["minor"]?.int ?? 0).\(qemu?["micro"]?.int ?? 0)"
        let expansion = try await client.execute(
            "query-cpu-model-expansion",
            ["type": "full", "model": ["name": .string(accelerator == .kvm ? "host" : "max")]])
        var properties: [String: Bool] = [:]
        for (name, value) in expansion["model"]?["props"]?.object ?? [:] {
            if let on = value.bool { properties[name] = on }
        }
        var unavailable: [String: [String]] = [:]
        for definition in try await client.execute("query-cpu-definitions").array ?? [] {
            guard let name = definition["name"]?.string else { continue }
            unavailable[name] = definition["unavailable-features"]?.array?.compactMap(\.string) ?? []
        }
        _ = try? await client.execute("quit")
        return QEMUCapabilities(
            version: version, accelerator: accelerator, properties: properties, unavailableFeatures: unavailable, key: key)
    }

    /// Connects to a freshly started QEMU's QMP socket, retrying until it answers, until `ended`
    /// says why it never will (QEMU, or the process that launched it, has ended: its message),
    /// or for at most `timeout`.
    static func connectWhenReady(
        socket: String, timeout: Duration = .seconds(15), ended: () -> String?
    ) async throws -> QMPClient {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let message = ended() { throw HypervisorError.startFailed(message) }
            if FileManager.default.fileExists(atPath: socket), let client = try? await QMPClient.connect(path: socket) {
                return client
            }
            if ContinuousClock.now > deadline { throw HypervisorError.timeout("QEMU's QMP socket \(socket)") }
            try await Task.sleep(for: .milliseconds(1))
        }
    }
}
