import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOHTTP1
import NIOPosix
import TernAPI

/// ternd's HTTP server: the API's router behind HummingbirdCore's HTTP/1.1 server.
///
/// This is what Hummingbird's `Application` does, less its cache of the `Date` header: that
/// cache formats the date through Foundation's Gregorian calendar, which loads ICU's calendar
/// and time-zone data into the daemon. The header is written here from the C library's clock.
struct APIServer: Sendable {
    private let server: Server<HTTP1Channel>

    init(router: Router<BasicRequestContext>, address: BindAddress, logger: Logger) {
        let responder = router.buildResponder()
        let channel = HTTP1Channel(responder: { request, responseWriter, channel in
            let context = BasicRequestContext(source: .init(channel: channel, logger: logger))
            var response: Response
            do {
                response = try await responder.respond(to: request, context: context)
            } catch let error as HTTPParserError {
                throw error  // the HTTP channel answers it and closes the connection
            } catch {
                logger.debug("unhandled error", metadata: ["error": "\(error)"])
                response = Response(status: .internalServerError)
            }
            response.headers[.date] = Self.httpDate()
            response.headers[.server] = "ternd"
            response.headers[.init("Tern-API")!] = API.version  // the API's version, on every reply
            try await responseWriter.write(response: response.head, body: response.body)
        }, configuration: .init())
        server = Server(
            childChannelSetup: channel, configuration: .init(address: address, serverName: "ternd"),
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: logger)
    }

    /// Serves until ``stop()``.
    func run() async throws { try await server.run() }

    /// Stops listening and lets the requests in flight finish.
    func stop() async throws { try await server.shutdownGracefully() }

    /// The current time as an HTTP date (RFC 9110's IMF-fixdate, always GMT).
    static func httpDate(_ now: time_t = time(nil)) -> String {
        var now = now
        var parts = tm()
        gmtime_r(&now, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) "
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }
}
