import Foundation

#if canImport(FoundationXML)
import FoundationXML
#endif

/// A small read-only element tree built with Foundation's `XMLParser`, keeping the line and
/// column of every element so errors can point at it. Shared by the CPU XML here and the
/// domain XML of `TernHost`.
public struct XMLNode: Sendable {
    public var name: String
    public var attributes: [String: String]
    public var children: [XMLNode]
    public var text: String
    public var line: Int
    public var column: Int

    /// Parses `data`; `source` names it in errors (a file path, or "<stdin>").
    public static func parse(_ data: Data, source: String) throws(CPUError) -> XMLNode {
        let builder = TreeBuilder()
        let parser = XMLParser(data: data)
        parser.delegate = builder
        parser.shouldProcessNamespaces = false
        let ok = parser.parse() && parser.parserError == nil
        if ok, builder.stack.isEmpty, let root = builder.root { return root }
        let message: String
        if let failure = builder.failure {
            message = failure
        } else if ok, let open = builder.stack.last {
            message = "the document ended before <\(open.name)> (line \(open.line)) was closed"
        } else if ok || data.allSatisfy({ $0 == 0x20 || $0 == 0x0a || $0 == 0x0d || $0 == 0x09 }) {
            message = "the document is empty"
        } else if let open = builder.stack.last {
            message = "not well-formed inside <\(open.name)> (opened at line \(open.line))"
        } else {
            message = "not well-formed"
        }
        throw .malformedXML(
            source: source, line: max(parser.lineNumber, 1), column: max(parser.columnNumber, 1), message: message)
    }

    public static func parse(_ text: String, source: String) throws(CPUError) -> XMLNode {
        try parse(Data(text.utf8), source: source)
    }

    /// The children called `name`.
    public func children(named name: String) -> [XMLNode] { children.filter { $0.name == name } }

    /// The trimmed text of the first child called `name`.
    public func childText(_ name: String) -> String? {
        child(named: name).map { $0.text.trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    /// The first child called `name`.
    public func child(named name: String) -> XMLNode? { children.first { $0.name == name } }

    /// Every element called `name` at any depth below (and including) this one, in document order.
    public func descendants(named name: String) -> [XMLNode] {
        var result: [XMLNode] = []
        if self.name == name { result.append(self) }
        for child in children { result += child.descendants(named: name) }
        return result
    }
}

private final class TreeBuilder: NSObject, XMLParserDelegate {
    var stack: [XMLNode] = []
    var root: XMLNode?
    var failure: String?

    func parser(
        _ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?,
        qualifiedName qName: String?, attributes attributeDict: [String: String] = [:]
    ) {
        if root != nil && stack.isEmpty {
            failure = "more than one root element"
            parser.abortParsing()
            return
        }
        stack.append(
            XMLNode(
                name: elementName, attributes: attributeDict, children: [], text: "",
                line: parser.lineNumber, column: parser.columnNumber))
    }

    func parser(
        _ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName qName: String?
    ) {
        guard let node = stack.popLast() else { return }
        if stack.isEmpty { root = node } else { stack[stack.count - 1].children.append(node) }
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        if !stack.isEmpty { stack[stack.count - 1].text += string }
    }
}

/// Escapes text for use inside an XML attribute value or element.
public func xmlEscape(_ text: String) -> String {
    var out = ""
    for ch in text {
        switch ch {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "'": out += "&apos;"
        case "\"": out += "&quot;"
        default: out.append(ch)
        }
    }
    return out
}
