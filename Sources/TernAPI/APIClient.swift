import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// A client for `ternd`'s API over a unix socket or TCP (HTTP/1.1, one request per connection).
public struct APIClient: Sendable {
    /// Where the daemon listens.
    public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
        case unixSocket(String)
        case tcp(host: String, port: Int)

        /// Reads `--connect`: a socket path, `unix:///path`, or `tcp://host:port` / `http://host:port`.
        public init(_ text: String) throws {
            for prefix in ["tcp://", "http://"] where text.hasPrefix(prefix) {
                let rest = text.dropFirst(prefix.count).split(separator: "/").first ?? ""
                let parts = rest.split(separator: ":")
                guard parts.count == 2, let port = Int(parts[1]) else {
                    throw APIError(code: "bad-endpoint", error: "cannot read '\(text)': expected tcp://host:port")
                }
                self = .tcp(host: String(parts[0]), port: port)
                return
            }
            self = .unixSocket(text.hasPrefix("unix://") ? String(text.dropFirst("unix://".count)) : text)
        }

        public var description: String {
            switch self {
            case .unixSocket(let path): path
            case .tcp(let host, let port): "tcp://\(host):\(port)"
            }
        }
    }

    public let endpoint: Endpoint
    /// How long to wait for the reply once connected; nil: as long as it takes (a `migrate` asked
    /// of one's own daemon lasts as long as the move). Past it the request fails with code
    /// `timeout`, and whether the daemon acted on it is not known.
    public var timeout: Duration?

    public init(endpoint: Endpoint, timeout: Duration? = nil) {
        self.endpoint = endpoint
        self.timeout = timeout
    }

    public func get<T: Decodable>(_ path: String, as type: T.Type = T.self) async throws -> T {
        try await call(.GET, path, body: Optional<DefineRequest>.none)
    }

    public func post<T: Decodable>(_ path: String, as type: T.Type = T.self) async throws -> T {
        try await call(.POST, path, body: Optional<DefineRequest>.none)
    }

    public func post<B: Encodable, T: Decodable>(_ path: String, body: B, as type: T.Type = T.self) async throws -> T {
        try await call(.POST, path, body: body)
    }

    public func delete<T: Decodable>(_ path: String, as type: T.Type = T.self) async throws -> T {
        try await call(.DELETE, path, body: Optional<DefineRequest>.none)
    }

    /// Sends one request; a non-2xx reply is thrown as the daemon's ``APIError``.
    func call<B: Encodable, T: Decodable>(_ method: HTTPMethod, _ path: String, body: B?) async throws -> T {
        let payload = try body.map { try JSONEncoder().encode($0) }
        let (status, data) = try await request(method: method, uri: path, body: payload)
        guard (200..<300).contains(status) else {
            if let error = try? JSONDecoder().decode(APIError.self, from: data) { throw error }
            throw APIError(code: "http-\(status)", error: "ternd answered HTTP \(status)")
        }
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch {
            throw APIError(code: "bad-reply", error: "cannot read ternd's reply: \(error)")
        }
    }

    private func request(method: HTTPMethod, uri: String, body: Data?) async throws -> (Int, Data) {
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connectTimeout(.seconds(5))
        let initializer: @Sendable (any Channel) -> EventLoopFuture<NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>> = {
            channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
            }
        }
        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        do {
            switch endpoint {
            case .unixSocket(let path):
                channel = try await bootstrap.connect(unixDomainSocketPath: path, channelInitializer: initializer)
            case .tcp(let host, let port):
                channel = try await bootstrap.connect(host: host, port: port, channelInitializer: initializer)
            }
        } catch {
            throw APIError(code: "unreachable", error: "cannot reach ternd at \(endpoint): \(error) (is it running?)")
        }
        // Past the time limit the connection is closed, which ends the exchange below.
        let timedOut = NIOLockedValueBox(false)
        let timer = timeout.map { limit in
            channel.channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(limit / .nanoseconds(1)))) { [channel] in
                timedOut.withLockedValue { $0 = true }
                channel.channel.close(promise: nil)
            }
        }
        defer { timer?.cancel() }
        do {
            return try await exchange(on: channel, method: method, uri: uri, body: body)
        } catch {
            guard timedOut.withLockedValue({ $0 }), let timeout else { throw error }
            throw APIError(
                code: "timeout", error: "ternd at \(endpoint) did not answer within \(timeout)")
        }
    }

    private func exchange(
        on channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>, method: HTTPMethod, uri: String, body: Data?
    ) async throws -> (Int, Data) {
        try await channel.executeThenClose { inbound, outbound in
            var head = HTTPRequestHead(version: .http1_1, method: method, uri: uri)
            head.headers.add(name: "Host", value: "ternd")
            head.headers.add(name: "Connection", value: "close")
            head.headers.add(name: "Content-Length", value: String(body?.count ?? 0))
            if body != nil { head.headers.add(name: "Content-Type", value: "application/json") }
            var parts: [HTTPClientRequestPart] = [.head(head)]
            if let body { parts.append(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            parts.append(.end(nil))
            // ternd may answer and close as soon as it has the request head (a request without a
            // body is complete then), before the last of these writes: its reply still counts.
            var writeError: (any Error)?
            do { try await outbound.write(contentsOf: parts) } catch { writeError = error }
            var status: Int?
            var collected = ByteBuffer()
            for try await part in inbound {
                switch part {
                case .head(let response): status = Int(response.status.code)
                case .body(var chunk):
                    guard collected.readableBytes + chunk.readableBytes < 64 << 20 else {
                        throw APIError(code: "too-large", error: "ternd's reply is larger than 64 MiB")
                    }
                    collected.writeBuffer(&chunk)
                case .end:
                    guard let status else { break }
                    return (status, Data(collected.readableBytesView))
                }
            }
            if let writeError { throw writeError }
            throw APIError(code: "closed", error: "ternd closed the connection before replying")
        }
    }
}
