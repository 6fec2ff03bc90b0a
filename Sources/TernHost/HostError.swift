/// Errors of one host's orchestration, with the context a user needs.
public enum HostError: Error, Sendable, CustomStringConvertible {
    /// A file given on the command line or in a definition cannot be read.
    case unreadableFile(path: String, reason: String)
    /// No VM of that name is defined here.
    case notFound(String)
    /// A VM of that name is already defined.
    case alreadyExists(String)
    /// The action does not apply in the VM's current state.
    case invalidState(name: String, state: String, action: String)
    /// The state directory's database failed.
    case database(String)
    /// The processor compatibility check refused a VM coming here (restore or incoming migration).
    case incompatibleCPU(name: String, source: String, reason: String, missing: [String])
    /// A migration or save did not complete; the VM is still where it was.
    case migrationFailed(name: String, phase: String, reason: String, vmState: String)
    /// A save file's content (not its format) is unusable.
    case badSaveFile(path: String, reason: String)
    /// A request this daemon cannot act on as given (the message says what to change).
    case badRequest(String)

    public var description: String {
        switch self {
        case let .unreadableFile(path, reason): "cannot read \(path): \(reason)"
        case let .notFound(name): "no VM named '\(name)' is defined on this host"
        case let .alreadyExists(name): "a VM named '\(name)' is already defined on this host"
        case let .invalidState(name, state, action): "cannot \(action) VM '\(name)': it is \(state)"
        case let .database(message): "state database: \(message)"
        case let .incompatibleCPU(name, source, reason, _):
            "processor compatibility check refused VM '\(name)' from \(source): \(reason)"
        case let .migrationFailed(name, phase, reason, vmState):
            "moving VM '\(name)' failed during \(phase): \(reason); the VM is \(vmState) on the source"
        case let .badSaveFile(path, reason): "\(path): \(reason)"
        case let .badRequest(message): message
        }
    }
}
