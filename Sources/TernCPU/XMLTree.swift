import Foundation

#if canImport(FoundationXML)
import FoundationXML
#endif

/// A small read-only element tree built with Foundation's `XMLParser`, keeping the line and
/// column of every element so errors can point at it.
struct XMLNode: Sendable {
    var name: String
    var attributes: [String: String]
    var children: [XMLNode]
    var text: String
    var line: Int
    var column: Int

    /// Parses `data`; `source` names it in errors (a file path, or "<stdin>").
    static func parse(_ data: Data, source: String) throws(CPUError) -> XMLNode {
        let builder = TreeBuilder()
        let parser = XMLParser(data: data)
        parser.delegate = builder
        parser.shouldProcessNamespaces = false
        let ok = parser.parse()
        guard ok, let root = builder.root else {
            let message = builder.failure
                ?? parser.parserError.map { describeParserError($0) }
                ?? "no root element"
            throw .malformedXML(
                source: source, line: max(parser.lineNumber, 1), column: max(parser.columnNumber, 1), message: message)
        }
        return root
    }

    static func parse(_ text: String, source: String) throws(CPUError) -> XMLNode {
        try parse(Data(text.utf8), source: source)
    }

    /// The children called `name`.
    func children(named name: String) -> [XMLNode] { children.filter { $0.name == name } }

    /// The first child called `name`.
    func child(named name: String) -> XMLNode? { children.first { $0.name == name } }

    /// Every element called `name` at any depth below (and including) this one, in document order.
    func descendants(named name: String) -> [XMLNode] {
        var result: [XMLNode] = []
        if self.name == name { result.append(self) }
        for child in children { result += child.descendants(named: name) }
        return result
    }
}

private func describeParserError(_ error: any Error) -> String {
    let code = (error as NSError).code
    let known: [Int: String] = [
        4: "document is empty", 5: "document ended before the root element was closed",
        9: "invalid character", 23: "expected '>'", 26: "undeclared entity", 38: "attribute value not quoted",
        39: "attribute redefined", 41: "attributes must be quoted",
        65: "expected a name", 68: "invalid name", 73: "expected '>'", 76: "mismatched end tag",
        111: "extra content at the end of the document",
    ]
    return known[code] ?? "parser error \(code)"
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
func xmlEscape(_ text: String) -> String {
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
