import Foundation

extension CPUMap {
    /// Loads a libvirt `cpu_map` directory (as shipped under `/usr/share/libvirt/cpu_map`).
    ///
    /// Reads `index.xml`, follows its `<include filename=…/>` rows for the x86 architecture in
    /// order (vendors, features, then models), and resolves models that name a parent model.
    /// QEMU and Linux spellings of features are taken from Tern's own map where the names agree.
    ///
    /// - Throws: ``CPUError/invalidCPUMap(path:reason:)`` for a missing or inconsistent map,
    ///   ``CPUError/malformedXML(source:line:column:message:)`` for a broken file.
    public static func libvirt(directory: String) throws(CPUError) -> CPUMap {
        let base = URL(fileURLWithPath: directory)
        let indexURL = base.appendingPathComponent("index.xml")
        let index = try readXML(indexURL)
        guard let arch = index.children(named: "arch").first(where: { $0.attributes["name"] == "x86" }) else {
            throw .invalidCPUMap(path: indexURL.path, reason: "no <arch name='x86'> element")
        }
        // Collect the definitions in document order, inlined or included.
        var elements: [(XMLNode, String)] = []
        for child in arch.children {
            if child.name == "include", let file = child.attributes["filename"] {
                let url = base.appendingPathComponent(file)
                let doc = try readXML(url)
                elements += doc.children.map { ($0, url.path) }
            } else {
                elements.append((child, indexURL.path))
            }
        }

        let builtin = try? CPUMap.builtin()
        var vendors: [CPUVendor] = []
        var features: [Feature] = []
        for (element, path) in elements {
            switch element.name {
            case "vendor":
                guard let name = element.attributes["name"], let string = element.attributes["string"] else {
                    throw .invalidCPUMap(path: path, reason: "<vendor> needs name and string")
                }
                vendors.append(CPUVendor(name: name, string: string))
            case "feature":
                guard let name = element.attributes["name"] else {
                    throw .invalidCPUMap(path: path, reason: "<feature> without a name at line \(element.line)")
                }
                let bits = try featureBits(element, path: path)
                let known = builtin?.registry.feature(named: name).flatMap { $0.name == name ? $0 : nil }
                features.append(
                    Feature(
                        name: name, index: features.count, bits: bits,
                        aliases: (known?.aliases ?? []) + element.children(named: "alias").compactMap { $0.attributes["name"] },
                        qemuName: known?.qemuName ?? name, linuxName: known?.linuxName ?? name,
                        migratable: element.attributes["migratable"] != "no"))
            default:
                continue
            }
        }
        let registry = try FeatureRegistry(features: features)

        var models: [CPUModel] = []
        var byName: [String: CPUModel] = [:]
        for (element, path) in elements where element.name == "model" {
            guard let name = element.attributes["name"] else {
                throw .invalidCPUMap(path: path, reason: "<model> without a name at line \(element.line)")
            }
            var model = CPUModel(name: name, vendor: nil, signatures: [], features: FeatureSet(), source: path)
            for child in element.children {
                switch child.name {
                case "model":
                    guard let parentName = child.attributes["name"], let parent = byName[parentName] else {
                        throw .invalidCPUMap(path: path, reason: "model '\(name)' names an unknown parent model")
                    }
                    model.vendor = parent.vendor
                    model.signatures = parent.signatures
                    model.features.formUnion(parent.features)
                    model.removedFeatures.formUnion(parent.removedFeatures)
                case "vendor":
                    guard let vendor = child.attributes["name"], vendors.contains(where: { $0.name == vendor }) else {
                        throw .invalidCPUMap(path: path, reason: "model '\(name)' names an unknown vendor")
                    }
                    model.vendor = vendor
                case "signature":
                    guard let family = child.attributes["family"].flatMap({ Int($0) }),
                        let number = child.attributes["model"].flatMap({ Int($0) })
                    else {
                        throw .invalidCPUMap(path: path, reason: "model '\(name)' has an invalid <signature>")
                    }
                    model.signatures.append(
                        CPUSignature(family: family, model: number, stepping: child.attributes["stepping"].flatMap { Int($0) } ?? 0))
                case "feature":
                    guard let featureName = child.attributes["name"], let feature = registry.feature(named: featureName)
                    else {
                        throw .invalidCPUMap(path: path, reason: "model '\(name)' names an unknown feature")
                    }
                    if child.attributes["removed"] == "yes" {
                        model.removedFeatures.insert(feature)
                    } else {
                        model.features.insert(feature)
                    }
                case "decode":
                    model.decodeHost = child.attributes["host"] != "off"
                    model.decodeGuest = child.attributes["guest"] != "off"
                default:
                    continue
                }
            }
            models.append(model)
            byName[name] = model
        }
        return CPUMap(registry: registry, vendors: vendors, models: models, source: directory)
    }

    private static func readXML(_ url: URL) throws(CPUError) -> XMLNode {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw .invalidCPUMap(path: url.path, reason: "cannot read file (\(error.localizedDescription))")
        }
        return try XMLNode.parse(data, source: url.path)
    }

    /// The bits of one `<feature>`: every set bit of every register of every `<cpuid>`/`<msr>` row.
    private static func featureBits(_ element: XMLNode, path: String) throws(CPUError) -> [FeatureBit] {
        var bits: [FeatureBit] = []
        for row in element.children {
            switch row.name {
            case "cpuid":
                guard let function = row.attributes["eax_in"].flatMap(parseHex) else {
                    throw .invalidCPUMap(path: path, reason: "feature '\(element.attributes["name"] ?? "")' has a <cpuid> without eax_in")
                }
                let leaf = CPUIDLeaf(UInt32(function), subleaf: UInt32(row.attributes["ecx_in"].flatMap(parseHex) ?? 0))
                for register in CPUIDRegister.allCases {
                    let value = row.attributes[register.rawValue].flatMap(parseHex) ?? 0
                    for bit in 0..<32 where value & (1 << UInt64(bit)) != 0 {
                        bits.append(.cpuid(leaf: leaf, register: register, bit: bit))
                    }
                }
            case "msr":
                guard let index = row.attributes["index"].flatMap(parseHex) else {
                    throw .invalidCPUMap(path: path, reason: "feature '\(element.attributes["name"] ?? "")' has an <msr> without index")
                }
                let low = row.attributes["eax"].flatMap(parseHex) ?? 0
                let high = row.attributes["edx"].flatMap(parseHex) ?? 0
                let value = (high << 32) | (low & 0xffff_ffff)
                for bit in 0..<64 where value & (1 << UInt64(bit)) != 0 {
                    bits.append(.msr(index: UInt32(index), bit: bit))
                }
            default:
                continue
            }
        }
        return bits
    }
}
