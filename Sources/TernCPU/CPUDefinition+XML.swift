import Foundation

extension CPUDefinition {
    /// Reads one `<cpu>` element (the root of `xml`, or the first `<cpu>` found inside a larger
    /// document such as a domain or capabilities XML).
    ///
    /// - Throws: ``CPUError/malformedXML(source:line:column:message:)`` with the line and column
    ///   of the problem, ``CPUError/invalidXML(source:message:)`` when no valid `<cpu>` is found.
    public init(xml: String, source: String = "<input>") throws(CPUError) {
        let root = try XMLNode.parse(xml, source: source)
        guard let cpu = CPUDefinition.cpuElements(in: root).first else {
            throw .invalidXML(source: source, message: "no <cpu> element found")
        }
        self = try CPUDefinition(element: cpu, source: source)
    }

    /// Reads every `<cpu>` element of a document: a single `<cpu>`, several `<cpu>` elements
    /// under any root, or whole capabilities / domain XML documents — what `virsh cpu-baseline`
    /// accepts.
    public static func all(xml: String, source: String = "<input>") throws(CPUError) -> [CPUDefinition] {
        // Several top-level <cpu> elements are allowed, as virsh allows them: when the text has
        // more than one root, it is read again wrapped in one. XML declarations are blanked out
        // (not removed) so line and column numbers still point into the user's file.
        let root: XMLNode
        do {
            root = try XMLNode.parse(xml, source: source)
        } catch let error {
            var text = xml
            while let start = text.range(of: "<?xml"),
                let end = text.range(of: "?>", range: start.upperBound..<text.endIndex)
            {
                let width = text.distance(from: start.lowerBound, to: end.upperBound)
                text.replaceSubrange(start.lowerBound..<end.upperBound, with: String(repeating: " ", count: width))
            }
            // Several roots read fine once wrapped; anything else keeps the first error.
            guard let wrapped = try? XMLNode.parse("<tern-cpus>" + text + "</tern-cpus>", source: source),
                wrapped.children.count > 1
            else { throw error }
            root = wrapped
        }
        var result: [CPUDefinition] = []
        for element in cpuElements(in: root) { result.append(try CPUDefinition(element: element, source: source)) }
        if result.isEmpty { throw .invalidXML(source: source, message: "no <cpu> element found") }
        return result
    }

    /// `<cpu>` elements that describe a CPU (not the `<cpu>` of domain capabilities, which
    /// lists modes).
    static func cpuElements(in root: XMLNode) -> [XMLNode] {
        if root.name == "domainCapabilities" { return [] }
        return root.descendants(named: "cpu").filter { $0.child(named: "mode") == nil }
    }

    /// Reads a `<cpu>` element already parsed (e.g. inside a domain definition).
    public init(element: XMLNode, source: String) throws(CPUError) {
        func invalid(_ node: XMLNode, _ message: String) -> CPUError {
            .invalidXML(source: source, message: "line \(node.line): \(message)")
        }
        func attribute<T: RawRepresentable>(_ node: XMLNode, _ name: String, _ type: T.Type) throws(CPUError) -> T?
        where T.RawValue == String {
            guard let text = node.attributes[name] else { return nil }
            guard let value = T(rawValue: text) else {
                throw invalid(node, "invalid \(name)='\(text)' on <\(node.name)>")
            }
            return value
        }
        func integer(_ node: XMLNode, _ name: String) throws(CPUError) -> Int? {
            guard let text = node.attributes[name] else { return nil }
            guard let value = Int(text), value >= 0 else { throw invalid(node, "invalid \(name)='\(text)' on <\(node.name)>") }
            return value
        }

        let kind: Kind = element.child(named: "arch") != nil ? .host : .guest
        self.init(kind: kind)
        mode = try attribute(element, "mode", Mode.self) ?? .custom
        match = try attribute(element, "match", Match.self)
        check = try attribute(element, "check", Check.self)
        if let text = element.attributes["migratable"] {
            guard text == "on" || text == "off" else { throw invalid(element, "invalid migratable='\(text)'") }
            migratable = text == "on"
        }
        arch = element.child(named: "arch").map { $0.text.trimmingCharacters(in: .whitespacesAndNewlines) }
        if let modelNode = element.child(named: "model") {
            let name = modelNode.text.trimmingCharacters(in: .whitespacesAndNewlines)
            model = name.isEmpty ? nil : name
            fallback = try attribute(modelNode, "fallback", Fallback.self)
            vendorID = modelNode.attributes["vendor_id"]
            if let vendorID, vendorID.utf8.count != 12 {
                throw invalid(modelNode, "vendor_id must be exactly 12 characters")
            }
        }
        if let vendorNode = element.child(named: "vendor") {
            let name = vendorNode.text.trimmingCharacters(in: .whitespacesAndNewlines)
            if name.isEmpty { throw invalid(vendorNode, "empty <vendor>") }
            vendor = name
        }
        if let node = element.child(named: "signature") {
            guard let family = try integer(node, "family"), let model = try integer(node, "model") else {
                throw invalid(node, "<signature> needs family and model")
            }
            signature = CPUSignature(family: family, model: model, stepping: try integer(node, "stepping") ?? 0)
        }
        microcode = element.child(named: "microcode")?.attributes["version"]
        if let node = element.child(named: "topology") {
            let topology = Topology(
                sockets: try integer(node, "sockets") ?? 1, dies: try integer(node, "dies") ?? 1,
                cores: try integer(node, "cores") ?? 1, threads: try integer(node, "threads") ?? 1)
            if topology.vcpus == 0 { throw invalid(node, "topology values must be at least 1") }
            self.topology = topology
        }
        for node in element.children(named: "feature") {
            guard let name = node.attributes["name"], !name.isEmpty else {
                throw invalid(node, "<feature> without a name")
            }
            var policy: Policy? = nil
            if let text = node.attributes["policy"] {
                guard let value = Policy(rawValue: text) else { throw CPUError.unknownPolicy(text, feature: name) }
                policy = value
            }
            if kind == .guest && policy == nil { policy = .require }
            if kind == .host { policy = nil }
            if features.contains(where: { $0.name == name }) {
                throw invalid(node, "feature '\(name)' is listed more than once")
            }
            features.append(FeatureRequest(name: name, policy: policy))
        }
        if kind == .guest && match == nil && model != nil && mode == .custom { match = .exact }
        if kind == .guest && mode == .custom && model == nil && !features.isEmpty {
            throw invalid(element, "a custom CPU with features needs a <model>")
        }
    }

    /// The libvirt XML for this CPU, indented by `indent` spaces (two more per level).
    public func xml(indent: Int = 0) -> String {
        let pad = String(repeating: " ", count: indent)
        var attrs = ""
        if kind == .guest {
            attrs += " mode='\(mode.rawValue)'"
            if let match, mode == .custom { attrs += " match='\(match.rawValue)'" }
            if let check { attrs += " check='\(check.rawValue)'" }
            if let migratable { attrs += " migratable='\(migratable ? "on" : "off")'" }
        }
        var lines: [String] = []
        if let arch { lines.append("<arch>\(xmlEscape(arch))</arch>") }
        if let model {
            var modelAttrs = ""
            if let fallback { modelAttrs += " fallback='\(fallback.rawValue)'" }
            if let vendorID { modelAttrs += " vendor_id='\(xmlEscape(vendorID))'" }
            lines.append("<model\(modelAttrs)>\(xmlEscape(model))</model>")
        }
        if let vendor { lines.append("<vendor>\(xmlEscape(vendor))</vendor>") }
        if let microcode { lines.append("<microcode version='\(xmlEscape(microcode))'/>") }
        if let signature {
            lines.append("<signature family='\(signature.family)' model='\(signature.model)' stepping='\(signature.stepping)'/>")
        }
        if let topology {
            lines.append(
                "<topology sockets='\(topology.sockets)' dies='\(topology.dies)' cores='\(topology.cores)' threads='\(topology.threads)'/>"
            )
        }
        for feature in features {
            if let policy = feature.policy {
                lines.append("<feature policy='\(policy.rawValue)' name='\(xmlEscape(feature.name))'/>")
            } else {
                lines.append("<feature name='\(xmlEscape(feature.name))'/>")
            }
        }
        if lines.isEmpty { return "\(pad)<cpu\(attrs)/>\n" }
        return "\(pad)<cpu\(attrs)>\n" + lines.map { "\(pad)  \($0)\n" }.joined() + "\(pad)</cpu>\n"
    }
}
