/// Errors a hypervisor backend reports, with what the user needs to act on them.
public enum HypervisorError: Error, Sendable, CustomStringConvertible {
    /// The hypervisor program is not installed.
    case notInstalled(String)
    /// A file the VM needs is missing or unusable.
    case badFile(path: String, reason: String)
    /// The VM's definition asks for something impossible (memory too small, 0 vCPUs …).
    case invalidConfiguration(String)
    /// This host cannot give the guest these features.
    case cpuNotOffered(missing: [String])
    /// The hypervisor refused to start or died while starting; its own message.
    case startFailed(String)
    /// The guest got a different CPU from the one asked for.
    case cpuMismatch(missingInGuest: [String], unexpectedInGuest: [String])
    /// A control command failed; the command and the hypervisor's message.
    case commandFailed(command: String, message: String)
    /// The VM's process is gone.
    case notRunning(String)
    /// Waiting for the hypervisor took too long.
    case timeout(String)

    public var description: String {
        switch self {
        case let .notInstalled(program): "\(program) is not installed (run scripts/install-deps.sh)"
        case let .badFile(path, reason): "\(path): \(reason)"
        case let .invalidConfiguration(reason): "invalid VM definition: \(reason)"
        case let .cpuNotOffered(missing):
            "this host cannot offer the guest CPU: missing features: \(missing.joined(separator: ", "))"
        case let .startFailed(message): "the hypervisor failed to start the VM: \(message)"
        case let .cpuMismatch(missing, unexpected):
            "the guest did not get the CPU Tern asked for (missing: \(missing.joined(separator: ", ")); "
                + "unexpected: \(unexpected.joined(separator: ", ")))"
        case let .commandFailed(command, message): "\(command) failed: \(message)"
        case let .notRunning(name): "VM '\(name)' is not running"
        case let .timeout(what): "timed out waiting for \(what)"
        }
    }
}
