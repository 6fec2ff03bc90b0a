import CTernHost
import Foundation
import TernAPI
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// How the client tells a daemon's answer from no answer at all: the source of a migration
/// decides from this whether the destination may run the VM.
@Suite struct APIClientTests {
    /// A unix socket that takes connections (the kernel queues them) and never answers.
    final class SilentSocket {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tern-silent-\(UUID().uuidString.prefix(8)).sock").path
        let fd: Int32

        init() throws {
            fd = tern_unix_listen(path)
            guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        }

        deinit {
            close(fd)
            unlink(path)
        }
    }

    @Test(.timeLimit(.minutes(1))) func aDaemonThatNeverAnswersTimesOut() async throws {
        let silent = try SilentSocket()
        let client = APIClient(endpoint: .unixSocket(silent.path), timeout: .milliseconds(300))
        let error = await #expect(throws: APIError.self) { _ = try await client.get("/vms", as: [String].self) }
        #expect(error?.code == "timeout", "\(String(describing: error))")
        #expect(error?.error.contains("did not answer within") == true)
        #expect(error?.isAnswer == false, "no answer is not the daemon's answer")
    }

    @Test func noDaemonIsUnreachableNotAnAnswer() async throws {
        let client = APIClient(endpoint: .unixSocket("/nonexistent/ternd.sock"), timeout: .seconds(5))
        let error = await #expect(throws: APIError.self) { _ = try await client.get("/vms", as: [String].self) }
        #expect(error?.code == "unreachable")
        #expect(error?.isAnswer == false)
    }

    @Test func aDaemonsRefusalIsAnAnswer() {
        #expect(APIError(code: "invalid-state", error: "cannot abort receiving VM 'x': it is not defined").isAnswer)
        #expect(APIError(code: "http-502", error: "ternd answered HTTP 502").isAnswer)
        #expect(!APIError(code: "closed", error: "ternd closed the connection before replying").isAnswer)
    }
}
