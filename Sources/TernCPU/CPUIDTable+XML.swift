extension CPUIDTable {
    /// Reads libvirt's `<cpudata arch='x86'>` format: `<cpuid eax_in ecx_in eax ebx ecx edx/>`
    /// and `<msr index eax edx/>` rows.
    ///
    /// - Throws: ``CPUError/malformedXML(source:line:column:message:)`` or
    ///   ``CPUError/invalidXML(source:message:)`` naming the bad row.
    public init(cpudataXML xml: String, source: String = "<input>") throws(CPUError) {
        let root = try XMLNode.parse(xml, source: source)
        try self.init(cpudata: root, source: source)
    }

    init(cpudata root: XMLNode, source: String) throws(CPUError) {
        guard root.name == "cpudata" else {
            throw .invalidXML(source: source, message: "expected <cpudata>, found <\(root.name)>")
        }
        if let arch = root.attributes["arch"], arch != "x86" {
            throw .invalidXML(source: source, message: "cpudata arch='\(arch)' is not x86")
        }
        self.init()
        for row in root.children {
            func value(_ name: String, required: Bool = false) throws(CPUError) -> UInt64 {
                guard let text = row.attributes[name] else {
                    if required { throw .invalidXML(source: source, message: "line \(row.line): <\(row.name)> needs \(name)") }
                    return 0
                }
                guard let number = parseHex(text) else {
                    throw .invalidXML(source: source, message: "line \(row.line): \(name)='\(text)' is not a number")
                }
                return number
            }
            switch row.name {
            case "cpuid":
                let leaf = CPUIDLeaf(UInt32(truncatingIfNeeded: try value("eax_in", required: true)),
                                     subleaf: UInt32(truncatingIfNeeded: try value("ecx_in")))
                leaves[leaf] = CPUIDRegisters(
                    eax: UInt32(truncatingIfNeeded: try value("eax")), ebx: UInt32(truncatingIfNeeded: try value("ebx")),
                    ecx: UInt32(truncatingIfNeeded: try value("ecx")), edx: UInt32(truncatingIfNeeded: try value("edx")))
            case "msr":
                let index = UInt32(truncatingIfNeeded: try value("index", required: true))
                msrs[index] = (try value("edx") << 32) | (try value("eax") & 0xffff_ffff)
            default:
                throw .invalidXML(source: source, message: "line \(row.line): unexpected <\(row.name)> in <cpudata>")
            }
        }
    }

    /// This table in libvirt's `<cpudata>` format.
    public var cpudataXML: String {
        var out = "<cpudata arch='x86'>\n"
        for leaf in leaves.keys.sorted() {
            let r = leaves[leaf] ?? CPUIDRegisters()
            out += "  <cpuid eax_in='\(hex32(leaf.function))' ecx_in='\(hex32(leaf.subleaf))' eax='\(hex32(r.eax))' "
                + "ebx='\(hex32(r.ebx))' ecx='\(hex32(r.ecx))' edx='\(hex32(r.edx))'/>\n"
        }
        for index in msrs.keys.sorted() {
            let v = msrs[index] ?? 0
            out += "  <msr index='\(hex32(index))' edx='\(hex32(UInt32(v >> 32)))' eax='\(hex32(UInt32(v & 0xffff_ffff)))'/>\n"
        }
        return out + "</cpudata>\n"
    }
}
