import Foundation
import Hummingbird
import TernAPI
import TernCPU
import TernHost
import TernHypervisor
import TernSaveFile

extension VMInfo: ResponseEncodable {}
extension HostInfo: ResponseEncodable {}
extension ConsoleText: ResponseEncodable {}
extension DefineRequest: ResponseCodable {}
extension SaveRequest: ResponseCodable {}
extension SaveReport: ResponseCodable {}
extension RestoreRequest: ResponseCodable {}
extension RestoreReport: ResponseCodable {}
extension MigrateRequest: ResponseCodable {}
extension MigrationReport: ResponseCodable {}
extension VMTransfer: ResponseCodable {}
extension IncomingCheckReply: ResponseEncodable {}
extension MigrationProgress: ResponseEncodable {}
extension IncomingMigrationRequest: ResponseCodable {}
extension IncomingMigrationReply: ResponseCodable {}
extension IncomingMigrationFinish: ResponseEncodable {}

/// The routes of Tern's API (documented in `TernAPI/APITypes.swift`) over a ``Host``.
enum APIRouter {
    static func make(host: VMHost) -> Router<BasicRequestContext> {
        let router = Router()
        router.middlewares.add(ErrorMiddleware())
        router.get("/host") { _, _ in try await host.hostInfo() }
        router.get("/vms") { _, _ in try await host.list() }
        router.post("/vms") { request, context -> VMInfo in
            let body = try await request.decode(as: DefineRequest.self, context: context)
            return try await host.define(xml: body.xml)
        }
        router.get("/vms/{name}") { _, context in try await host.info(context.parameters.require("name")) }
        router.delete("/vms/{name}") { _, context in try await host.undefine(context.parameters.require("name")) }
        router.post("/vms/{name}/start") { _, context in try await host.start(context.parameters.require("name")) }
        router.post("/vms/{name}/shutdown") { _, context in try await host.shutdown(context.parameters.require("name")) }
        router.post("/vms/{name}/destroy") { _, context in try await host.destroy(context.parameters.require("name")) }
        router.post("/vms/{name}/suspend") { _, context in try await host.suspend(context.parameters.require("name")) }
        router.post("/vms/{name}/resume") { _, context in try await host.resume(context.parameters.require("name")) }
        router.get("/vms/{name}/console") { request, context -> ConsoleText in
            let lines = request.uri.queryParameters.get("lines", as: Int.self) ?? 50
            return ConsoleText(lines: try await host.console(context.parameters.require("name"), lines: lines))
        }
        // Moving VMs: save/restore, live and quick migration (this daemon as the source) …
        router.post("/vms/{name}/save") { request, context -> SaveReport in
            let body = try await request.decode(as: SaveRequest.self, context: context)
            return try await host.save(context.parameters.require("name"), to: body.path)
        }
        router.post("/restore") { request, context -> RestoreReport in
            try await host.restore(try await request.decode(as: RestoreRequest.self, context: context))
        }
        router.post("/vms/{name}/migrate") { request, context -> MigrationReport in
            let body = try await request.decode(as: MigrateRequest.self, context: context)
            return try await host.migrate(context.parameters.require("name"), body)
        }
        router.get("/vms/{name}/migration") { _, context in try await host.migrationProgress(context.parameters.require("name")) }
        router.post("/vms/{name}/migration/abort") { _, context in try await host.abortJob(context.parameters.require("name")) }
        // … and as the destination.
        router.post("/migrations/check") { request, context -> IncomingCheckReply in
            try await host.checkIncoming(try await request.decode(as: VMTransfer.self, context: context))
        }
        router.post("/migrations/incoming") { request, context -> IncomingMigrationReply in
            try await host.prepareIncoming(try await request.decode(as: IncomingMigrationRequest.self, context: context))
        }
        router.post("/migrations/incoming/{name}/finish") { _, context in
            try await host.finishIncoming(context.parameters.require("name"))
        }
        router.post("/migrations/incoming/{name}/recover") { _, context in
            try await host.recoverIncoming(context.parameters.require("name"))
        }
        router.delete("/migrations/incoming/{name}") { _, context in
            try await host.abortIncoming(context.parameters.require("name"))
        }
        return router
    }
}

/// Turns every error into a JSON `APIError` with a fitting status; the daemon keeps running.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError {
            return try json(APIError(code: "http", error: error.body ?? "\(error.status)"), status: error.status)
        } catch {
            let (status, code) = classify(error)
            return try json(APIError(code: code, error: "\(error)"), status: status)
        }
    }

    private func classify(_ error: any Error) -> (HTTPResponse.Status, String) {
        switch error {
        case let error as HostError:
            switch error {
            case .notFound: return (.notFound, "not-found")
            case .alreadyExists: return (.conflict, "already-exists")
            case .invalidState: return (.conflict, "invalid-state")
            case .unreadableFile: return (.badRequest, "unreadable-file")
            case .database: return (.internalServerError, "database")
            case .incompatibleCPU: return (.unprocessableContent, "incompatible-cpu")
            case .migrationFailed: return (.badGateway, "migration-failed")
            case .badSaveFile: return (.badRequest, "bad-save-file")
            case .badRequest: return (.badRequest, "bad-request")
            }
        case is SaveFileError: return (.badRequest, "bad-save-file")
        case is VMDefinitionError: return (.badRequest, "invalid-definition")
        case let error as CPUError:
            switch error {
            case .hostCannotOffer, .hostNotInPool, .forbiddenFeaturePresent, .mixedVendors: return (.unprocessableContent, "cpu-not-offered")
            default: return (.badRequest, "invalid-cpu")
            }
        case let error as HypervisorError:
            switch error {
            case .badFile, .invalidConfiguration: return (.badRequest, "invalid-definition")
            case .cpuNotOffered, .cpuMismatch: return (.unprocessableContent, "cpu-not-offered")
            default: return (.internalServerError, "hypervisor")
            }
        default: return (.internalServerError, "internal")
        }
    }

    private func json(_ body: APIError, status: HTTPResponse.Status) throws -> Response {
        let data = try JSONEncoder().encode(body)
        return Response(
            status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
