//! A classifier record (`classifier.mpk`) checked against the model its `classifier.json`
//! describes, before Burn loads it.
//!
//! Burn's loader checks no shape: a record of another model loads, and the first forward pass
//! panics on a product of mismatched matrices (or a layer count that differs panics in the
//! load itself, and a tensor whose bytes do not fill its shape reads past them). So the file
//! is first read as plain MessagePack, without building any tensor: every tensor it holds
//! (a `{bytes, shape, dtype}` map under its parameter's path) must be a parameter of the
//! model, with the parameter's shape and the bytes that shape needs, and no parameter may be
//! missing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A MessagePack value as far as the check needs it: byte strings are kept as their length.
#[derive(Debug)]
enum Node {
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    Bytes(usize),
    Str(String),
    Int(u64),
    Other,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MessagePack value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(u64::try_from(v).map_or(Node::Other, Node::Int))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Bytes(v.len()))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<Node, Node>()? {
            let key = match key {
                Node::Str(s) => s,
                Node::Int(i) => i.to_string(),
                _ => String::new(),
            };
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

/// A tensor as a record stores it.
struct Stored {
    shape: Vec<usize>,
    bytes: usize,
    /// Bytes per element, when the dtype is one the check knows.
    element_size: Option<usize>,
}

/// Every `{bytes, shape, dtype}` map under `node`, by path (`llama.layers.0.…weight`: the
/// record's `item` root and each parameter's `param` level left out).
fn collect(node: &Node, path: &mut Vec<String>, out: &mut BTreeMap<String, Stored>) {
    match node {
        Node::Map(entries) => {
            let field = |name: &str| entries.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            if let (Some(Node::Bytes(bytes)), Some(Node::Seq(shape)), Some(dtype)) =
                (field("bytes"), field("shape"), field("dtype"))
            {
                let shape = shape
                    .iter()
                    .map(|d| match d {
                        Node::Int(v) => usize::try_from(*v).unwrap_or(usize::MAX),
                        _ => usize::MAX,
                    })
                    .collect();
                let element_size = match dtype {
                    Node::Str(name) => dtype_size(name),
                    _ => None,
                };
                let name = path
                    .iter()
                    .filter(|p| *p != "item" && *p != "param")
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(".");
                out.insert(
                    name,
                    Stored {
                        shape,
                        bytes: *bytes,
                        element_size,
                    },
                );
                return;
            }
            for (key, value) in entries {
                path.push(key.clone());
                collect(value, path, out);
                path.pop();
            }
        }
        Node::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                collect(item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn dtype_size(name: &str) -> Option<usize> {
    Some(match name {
        "F64" | "I64" | "U64" => 8,
        "F32" | "Flex32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" => 1,
        _ => return None,
    })
}

/// The shape of every float parameter of a module, by path, read without initialising a
/// lazy one.
#[derive(Default)]
struct Shapes {
    path: Vec<String>,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl<B: Backend> ModuleVisitor<B> for Shapes {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.shapes
            .insert(self.path.join("."), param.lazy_shape().to_vec());
    }
}

/// Checks the record `bytes` against `model`'s parameters; the error says which tensor and
/// how it differs (`implied_by` names the file the expected shapes come from).
pub(crate) fn check_record<B: Backend, M: Module<B>>(
    bytes: &[u8],
    model: &M,
    implied_by: &Path,
) -> Result<(), String> {
    let root: Node =
        rmp_serde::from_slice(bytes).map_err(|e| format!("not a Burn MessagePack record: {e}"))?;
    let mut stored = BTreeMap::new();
    collect(&root, &mut Vec::new(), &mut stored);
    let mut expected = Shapes::default();
    model.visit(&mut expected);
    let config = implied_by.display();
    for (name, shape) in &expected.shapes {
        let Some(found) = stored.get(name) else {
            return Err(format!(
                "tensor `{name}` is missing (the model of {config} has it, shape {shape:?})"
            ));
        };
        if found.shape != *shape {
            return Err(format!(
                "tensor `{name}` has shape {:?}, {config} implies {shape:?}",
                found.shape
            ));
        }
        let needed = found
            .element_size
            .and_then(|size| shape.iter().try_fold(size, |n, &d| n.checked_mul(d)));
        if needed.is_some_and(|needed| needed != found.bytes) {
            return Err(format!(
                "tensor `{name}` holds {} bytes, its shape {shape:?} needs {}",
                found.bytes,
                needed.unwrap_or_default()
            ));
        }
    }
    if let Some((name, found)) = stored
        .iter()
        .find(|(name, _)| !expected.shapes.contains_key(*name))
    {
        return Err(format!(
            "unexpected tensor `{name}` of shape {:?} (not a parameter of the model of {config})",
            found.shape
        ));
    }
    Ok(())
}
