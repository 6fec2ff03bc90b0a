/// Errors of one host's orchestration, with the context a user needs.
public enum HostError: Error, Sendable, CustomStringConvertible {
    /// A file given on the command line or in a definition cannot be read.
    case unreadableFile(path: String, reason: String)

    public var description: String {
        switch self {
        case let .unreadableFile(path, reason): "cannot read \(path): \(reason)"
        }
    }
}
