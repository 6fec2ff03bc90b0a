import CTernHost
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A client for QEMU's machine protocol (QMP) over a unix socket.
///
/// Wire format (QEMU's `docs/interop/qmp-spec`): one JSON object per line in each direction.
///
/// ```
/// QEMU  -> {"QMP": {"version": …, "capabilities": […]}}          greeting
/// Tern  -> {"execute": "qmp_capabilities", "id": 1}
/// QEMU  -> {"return": {}, "id": 1}
/// Tern  -> {"execute": "query-status", "id": 2}
/// QEMU  -> {"event": "STOP", "timestamp": {…}}                   events may come at any time
/// QEMU  -> {"return": {"status": "paused", …}, "id": 2}          or {"error": {"class", "desc"}, "id": 2}
/// ```
///
/// Replies are matched to commands by `id`; events are delivered on ``events``.
public final class QMPClient: Sendable {
    /// An asynchronous QMP event (`SHUTDOWN`, `STOP`, `RESUME`, `GUEST_PANICKED`, `RESET` …).
    public struct Event: Sendable {
        public var name: String
        public var data: JSONValue?
        /// When QEMU emitted it (its wall clock), in seconds since 1970.
        public var timestamp: Double?
    }

    fileprivate struct State {
        var nextID = 1
        var pending: [Int: EventLoopPromise<JSONValue>] = [:]
        /// The command each pending id was sent for (for error messages).
        var commands: [Int: String] = [:]
        var greeted: CheckedContinuation<Void, any Error>?
        var greeting: Bool = false
        /// What QEMU's greeting offers (`oob`).
        var capabilities: [String] = []
        var closed = false
        /// Commands armed to go out when an event arrives (``arm(_:when:)``), by token.
        var reflexes: [Int: Reflex] = [:]
    }

    /// A command armed by ``arm(_:when:)``: `send` writes it, once `trigger` accepts an event.
    fileprivate struct Reflex {
        let trigger: @Sendable (Event) -> Bool
        let send: @Sendable () -> Void
        let promise: EventLoopPromise<JSONValue>
    }

    private let channel: any Channel
    /// The connection's socket (the channel's own), for ``execute(_:_:passing:)``.
    private let socket: Int32
    private let inbox: Inbox
    private var state: NIOLockedValueBox<State> { inbox.state }
    /// Events QEMU sends, in order. Ends when the connection closes.
    public var events: AsyncStream<Event> { inbox.events }
    /// False once the connection has closed (QEMU exited, or ``close()``).
    public var isConnected: Bool { !state.withLockedValue { $0.closed } }
    /// Seconds a command may take before it fails with a timeout.
    public let commandTimeout: Double

    private init(channel: any Channel, socket: Int32, inbox: Inbox, timeout: Double) {
        self.channel = channel
        self.socket = socket
        self.inbox = inbox
        self.commandTimeout = timeout
    }

    /// Connects to QEMU's QMP socket, waits for the greeting and negotiates capabilities.
    ///
    /// - Throws: ``QMPError/connectionFailed(path:reason:)``, ``QMPError/timeout(command:)``.
    public static func connect(path: String, timeout: Double = 10) async throws(QMPError) -> QMPClient {
        let inbox = Inbox()
        let channel: any Channel
        // Connected here, so that the socket is known: descriptors are passed to QEMU on it.
        let socket = tern_unix_connect(path)
        guard socket >= 0 else { throw .connectionFailed(path: path, reason: String(cString: strerror(errno))) }
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            QMPLineHandler { message in inbox.receive(message) } onClose: { inbox.connectionClosed() })
                    }
                }
                .withConnectedSocket(socket).get()
        } catch {
            Glibc.close(socket)
            throw .connectionFailed(path: path, reason: "\(error)")
        }
        let client = QMPClient(channel: channel, socket: socket, inbox: inbox, timeout: timeout)
        do {
            try await client.waitForGreeting()
            // Out-of-band mode, where QEMU offers it, for its reading: QEMU reads a command a
            // byte at a time, and without it stops reading while a command runs. With it, the
            // commands sent together (a pause and a migration's start) are read while the first
            // runs, and the second begins the moment the first ends.
            let offersOOB = inbox.state.withLockedValue { $0.capabilities.contains("oob") }
            _ = try await client.execute("qmp_capabilities", offersOOB ? ["enable": ["oob"]] : nil)
        } catch {
            // QEMU serves one QMP client at a time: a connection left open would hold its place.
            try? await channel.close()
            throw error
        }
        return client
    }

    private func waitForGreeting() async throws(QMPError) {
        do {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let ready = self.state.withLockedValue { state -> Bool? in
                    if state.greeting { return true }
                    if state.closed { return nil }  // closed before it greeted: no word will come
                    state.greeted = continuation
                    return false
                }
                switch ready {
                case true?:
                    continuation.resume()
                    return
                case nil:
                    continuation.resume(throwing: QMPError.disconnected)
                    return
                default: break
                }
                // A continuation is resumed exactly once: whoever takes it out of the state does.
                channel.eventLoop.scheduleTask(in: .milliseconds(Int64(commandTimeout * 1000))) {
                    let waiter = self.state.withLockedValue { state -> CheckedContinuation<Void, any Error>? in
                        defer { state.greeted = nil }
                        return state.greeted
                    }
                    waiter?.resume(throwing: QMPError.timeout(command: "QMP greeting"))
                }
            }
        } catch let error as QMPError {
            throw error
        } catch {
            throw .disconnected
        }
    }

    /// One command for ``execute(inOrder:)``.
    public struct Command: Sendable {
        public var name: String
        public var arguments: [String: JSONValue]?
        public init(_ name: String, _ arguments: [String: JSONValue]? = nil) {
            self.name = name
            self.arguments = arguments
        }
    }

    /// Runs one QMP command and returns its `return` value.
    ///
    /// - Throws: ``QMPError/commandFailed(command:errorClass:message:)`` with QEMU's own text,
    ///   ``QMPError/timeout(command:)``, ``QMPError/disconnected``.
    @discardableResult
    public func execute(_ command: String, _ arguments: [String: JSONValue]? = nil) async throws(QMPError) -> JSONValue {
        try await execute(inOrder: [Command(command, arguments)])[0]
    }

    /// Runs one QMP command with an open file descriptor passed along (SCM_RIGHTS), for the
    /// commands that take one (`getfd`, `add-fd`). QEMU gets its own copy; `descriptor` stays
    /// open here.
    @discardableResult
    public func execute(_ command: String, _ arguments: [String: JSONValue]? = nil, passing descriptor: Int32)
        async throws(QMPError) -> JSONValue
    {
        let (socket, channel) = (self.socket, self.channel)
        let reply = submit(Command(command, arguments), fulfilling: channel.eventLoop.makePromise()) { data in
            // On the channel's own thread, once everything written before has left, so that no
            // other command's bytes come between these.
            channel.writeAndFlush(channel.allocator.buffer(capacity: 0)).flatMapThrowing {
                let unsent = { (why: String) in
                    QMPError.commandFailed(command: command, errorClass: "Tern", message: "the descriptor was not passed: \(why)")
                }
                let buffered = try channel.syncOptions?.getOption(.bufferedWritableBytes) ?? 0
                guard buffered == 0 else { throw unsent("\(buffered) bytes of other commands are still unsent") }
                let sent = data.withUnsafeBytes { tern_send_with_fd(socket, $0.baseAddress, $0.count, descriptor) }
                guard sent == 0 else { throw unsent(String(cString: strerror(errno))) }
            }
        }
        return try await Self.value(of: reply)
    }

    /// Sends `commands` at once, in this order, and returns their `return` values in the same
    /// order. QEMU runs a connection's commands one after another, so each sees what the ones
    /// before it did; what this saves is a round trip between them. The first failure, in
    /// order, is thrown; the commands after it were sent all the same, and QEMU ran them.
    @discardableResult
    public func execute(inOrder commands: [Command]) async throws(QMPError) -> [JSONValue] {
        let replies = commands.map { submit($0) }
        var values: [JSONValue] = []
        for reply in replies { values.append(try await Self.value(of: reply)) }
        return values
    }

    /// A command's `return` value, or its failure as a ``QMPError``.
    private static func value(of reply: EventLoopFuture<JSONValue>) async throws(QMPError) -> JSONValue {
        do {
            return try await reply.get()
        } catch let error as QMPError {
            throw error
        } catch {
            throw .disconnected
        }
    }

    /// Arms `command` to be sent the moment an event arrives that `trigger` accepts, from the
    /// thread that reads the connection: for a command the guest waits on (a `cont`), so that
    /// no task has to be scheduled between QEMU's word and the answer. `trigger` runs on that
    /// thread for every event until it accepts one (so it must be quick) and the command goes
    /// out at most once. The future holds its reply; ``disarm(_:)`` withdraws it unsent (the
    /// future then fails with ``QMPError/disconnected``, as it does if the connection closes).
    public func arm(_ command: Command, when trigger: @escaping @Sendable (Event) -> Bool)
        -> (token: Int, reply: EventLoopFuture<JSONValue>)
    {
        let promise = channel.eventLoop.makePromise(of: JSONValue.self)
        let reflex = Reflex(trigger: trigger, send: { _ = self.submit(command, fulfilling: promise) }, promise: promise)
        let token: Int? = state.withLockedValue { state in
            if state.closed { return nil }
            let token = state.nextID
            state.nextID += 1
            state.reflexes[token] = reflex
            return token
        }
        guard let token else {
            promise.fail(QMPError.disconnected)
            return (0, promise.futureResult)
        }
        return (token, promise.futureResult)
    }

    /// Withdraws a command armed by ``arm(_:when:)`` if it has not gone out yet.
    public func disarm(_ token: Int) {
        let reflex = state.withLockedValue { $0.reflexes.removeValue(forKey: token) }
        reflex?.promise.fail(QMPError.disconnected)
    }

    /// Sends one command; its reply, a timeout or the connection's end fulfills the future.
    /// Commands are written in the order this is called.
    private func submit(_ command: Command) -> EventLoopFuture<JSONValue> {
        submit(command, fulfilling: channel.eventLoop.makePromise(of: JSONValue.self))
    }

    /// Sends `command`, written by `write` (default: through the channel); its reply, a timeout,
    /// or a failed write or the connection's end fulfills `promise`.
    @discardableResult
    private func submit(
        _ command: Command, fulfilling promise: EventLoopPromise<JSONValue>,
        write: ((Data) -> EventLoopFuture<Void>)? = nil
    ) -> EventLoopFuture<JSONValue> {
        let id: Int? = state.withLockedValue { state in
            if state.closed { return nil }
            let id = state.nextID
            state.nextID += 1
            state.pending[id] = promise
            state.commands[id] = command.name
            return id
        }
        guard let id else {
            promise.fail(QMPError.disconnected)
            return promise.futureResult
        }
        var message: [String: JSONValue] = ["execute": .string(command.name), "id": .number(Double(id))]
        if let arguments = command.arguments { message["arguments"] = .object(arguments) }
        // Short as can be: QEMU reads it a byte at a time.
        let encoder = JSONEncoder()
        encoder.outputFormatting = .withoutEscapingSlashes
        var data = (try? encoder.encode(JSONValue.object(message))) ?? Data()
        data.append(0x0a)
        // The reply, the timeout and a failed write race to take the promise out of the state;
        // only the one that finds it fulfills it.
        let fail = { @Sendable (error: QMPError) in
            let waiter = self.state.withLockedValue { state in
                state.commands[id] = nil
                return state.pending.removeValue(forKey: id)
            }
            waiter?.fail(error)
        }
        let written = write?(data) ?? channel.writeAndFlush(channel.allocator.buffer(bytes: data))
        written.whenFailure { error in fail(error as? QMPError ?? .disconnected) }
        let name = command.name
        channel.eventLoop.scheduleTask(in: .milliseconds(Int64(commandTimeout * 1000))) { fail(.timeout(command: name)) }
        return promise.futureResult
    }

    /// Closes the connection.
    public func close() async {
        try? await channel.close()
    }

}

/// Where the channel handler delivers what QEMU sends; exists before the connection does, so
/// the greeting cannot arrive before anyone listens.
private final class Inbox: Sendable {
    let state = NIOLockedValueBox(QMPClient.State())
    let events: AsyncStream<QMPClient.Event>
    private let eventContinuation: AsyncStream<QMPClient.Event>.Continuation

    init() {
        (events, eventContinuation) = AsyncStream.makeStream(of: QMPClient.Event.self, bufferingPolicy: .bufferingNewest(256))
    }

    func receive(_ message: JSONValue) {
        if let greeting = message["QMP"] {
            let waiter = state.withLockedValue { state -> CheckedContinuation<Void, any Error>? in
                state.greeting = true
                state.capabilities = greeting["capabilities"]?.array?.compactMap(\.string) ?? []
                defer { state.greeted = nil }
                return state.greeted
            }
            waiter?.resume()
        } else if let name = message["event"]?.string {
            var timestamp: Double?
            if let seconds = message["timestamp"]?["seconds"]?.int, let micro = message["timestamp"]?["microseconds"]?.int {
                timestamp = Double(seconds) + Double(micro) / 1_000_000
            }
            let event = QMPClient.Event(name: name, data: message["data"], timestamp: timestamp)
            // Armed commands first: the ones whose trigger accepts this event go out now.
            let armed = state.withLockedValue { $0.reflexes }
            for (token, reflex) in armed.sorted(by: { $0.key < $1.key }) where reflex.trigger(event) {
                if state.withLockedValue({ $0.reflexes.removeValue(forKey: token) }) != nil { reflex.send() }
            }
            eventContinuation.yield(event)
        } else if let id = message["id"]?.int {
            let (waiter, command) = state.withLockedValue { state in
                (state.pending.removeValue(forKey: id), state.commands.removeValue(forKey: id))
            }
            if let error = message["error"] {
                waiter?.fail(
                    QMPError.commandFailed(
                        command: command ?? "id \(id)", errorClass: error["class"]?.string ?? "GenericError",
                        message: error["desc"]?.string ?? "\(error)"))
            } else {
                waiter?.succeed(message["return"] ?? .null)
            }
        }
    }

    func connectionClosed() {
        let waiters = state.withLockedValue { state -> [EventLoopPromise<JSONValue>] in
            state.closed = true
            defer {
                state.pending = [:]
                state.reflexes = [:]
            }
            return Array(state.pending.values) + state.reflexes.values.map(\.promise)
        }
        for waiter in waiters { waiter.fail(QMPError.disconnected) }
        let greeter = state.withLockedValue { state -> CheckedContinuation<Void, any Error>? in
            defer { state.greeted = nil }
            return state.greeted
        }
        greeter?.resume(throwing: QMPError.disconnected)
        eventContinuation.finish()
    }
}

/// Splits the byte stream into lines and decodes each as JSON.
private final class QMPLineHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    private let onMessage: @Sendable (JSONValue) -> Void
    private let onClose: @Sendable () -> Void
    private let pending = NIOLockedValueBox(ByteBuffer())

    init(onMessage: @escaping @Sendable (JSONValue) -> Void, onClose: @escaping @Sendable () -> Void) {
        self.onMessage = onMessage
        self.onClose = onClose
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        let lines: [Data] = pending.withLockedValue { buffer in
            buffer.writeBuffer(&incoming)
            var lines: [Data] = []
            while let newline = buffer.readableBytesView.firstIndex(of: 0x0a) {
                let length = newline - buffer.readerIndex
                if let bytes = buffer.readBytes(length: length) { lines.append(Data(bytes)) }
                buffer.moveReaderIndex(forwardBy: 1)
            }
            buffer.discardReadBytes()
            return lines
        }
        for line in lines where !line.isEmpty {
            if let message = try? JSONDecoder().decode(JSONValue.self, from: line) { onMessage(message) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        onClose()
        context.fireChannelInactive()
    }
}

/// Errors of the QMP client.
public enum QMPError: Error, Sendable, CustomStringConvertible {
    /// The socket could not be reached.
    case connectionFailed(path: String, reason: String)
    /// QEMU answered the command with an error; its class and text.
    case commandFailed(command: String, errorClass: String, message: String)
    /// QEMU did not answer in time.
    case timeout(command: String)
    /// The connection closed (QEMU exited).
    case disconnected

    public var description: String {
        switch self {
        case let .connectionFailed(path, reason): "cannot connect to QMP socket \(path): \(reason)"
        case let .commandFailed(command, errorClass, message): "QMP \(command) failed (\(errorClass)): \(message)"
        case let .timeout(command): "QMP \(command) timed out"
        case .disconnected: "the QMP connection closed (QEMU exited)"
        }
    }
}
