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

    public var description: String {
        switch self {
        case let .unreadableFile(path, reason): "cannot read \(path): \(reason)"
        case let .notFound(name): "no VM named '\(name)' is defined on this host"
        case let .alreadyExists(name): "a VM named '\(name)' is already defined on this host"
        case let .invalidState(name, state, action): "cannot \(action) VM '\(name)': it is \(state)"
        case let .database(message): "state database: \(message)"
        }
    }
}
