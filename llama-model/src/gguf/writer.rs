//! Writing a GGUF v3 file: the header, typed metadata, the tensor directory, then each
//! tensor's payload as it is produced, so that a whole model is never held encoded.
//!
//! The layout is the one [`super::container`] reads (and gguf-py's `GGUFWriter` writes):
//! payload offsets on the alignment (32, `general.alignment`'s default, so the key is not
//! written), the data section padded to it, and zero padding after every payload.

use std::io::Write;
use std::path::Path;

use super::container::MAGIC;
use super::GgmlType;
use crate::atomic_file::write_atomic_with;

/// The alignment of the data section and of every payload.
pub const ALIGNMENT: usize = 32;

/// A metadata value with the GGUF type it is written as.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

/// GGUF's value kinds (`gguf_type`).
const KIND_U32: u32 = 4;
const KIND_I32: u32 = 5;
const KIND_F32: u32 = 6;
const KIND_BOOL: u32 = 7;
const KIND_STRING: u32 = 8;
const KIND_ARRAY: u32 = 9;

/// One tensor of the directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    /// PyTorch shape, outermost first (the directory lists the extents innermost first).
    pub shape: Vec<usize>,
    pub kind: GgmlType,
}

impl TensorEntry {
    /// Payload bytes: whole blocks of the innermost extent (checked by [`write_gguf`]).
    pub fn byte_len(&self) -> usize {
        let (block, block_bytes) = self.kind.block();
        let count: usize = self.shape.iter().product();
        count / block as usize * block_bytes as usize
    }
}

/// Why a GGUF file could not be written (the caller names the file).
#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A tensor that cannot be stored as declared, or a payload of the wrong size.
    #[error("{0}")]
    Invalid(String),
    /// The producer of a payload failed.
    #[error("{0}")]
    Payload(String),
}

/// Write `metadata` and `tensors` to `path` as GGUF v3, atomically: `payload(i)` gives the
/// encoded bytes of `tensors[i]`, called once each, in order, while the file is written.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, MetaValue)],
    tensors: &[TensorEntry],
    mut payload: impl FnMut(usize) -> Result<Vec<u8>, String>,
) -> Result<(), GgufWriteError> {
    for t in tensors {
        let (block, _) = t.kind.block();
        let inner = t.shape.last().copied().unwrap_or(0);
        if t.shape.is_empty() || t.shape.len() > 4 || !inner.is_multiple_of(block as usize) {
            return Err(GgufWriteError::Invalid(format!(
                "tensor `{}` of shape {:?} cannot be stored as {}",
                t.name, t.shape, t.kind
            )));
        }
    }
    let header = header(metadata, tensors);
    // The producer's error, carried out of the writer's io::Result.
    let mut failure = None;
    let written = write_atomic_with(path, |out: &mut dyn Write| {
        out.write_all(&header)?;
        for (i, t) in tensors.iter().enumerate() {
            let bytes = match payload(i) {
                Ok(bytes) if bytes.len() == t.byte_len() => bytes,
                Ok(bytes) => {
                    failure = Some(GgufWriteError::Invalid(format!(
                        "tensor `{}`: {} payload bytes, {} expected",
                        t.name,
                        bytes.len(),
                        t.byte_len()
                    )));
                    return Err(std::io::Error::other("payload"));
                }
                Err(e) => {
                    failure = Some(GgufWriteError::Payload(e));
                    return Err(std::io::Error::other("payload"));
                }
            };
            out.write_all(&bytes)?;
            out.write_all(&[0u8; ALIGNMENT][..padding(bytes.len())])?;
        }
        Ok(())
    });
    match (written, failure) {
        (_, Some(failure)) => Err(failure),
        (result, None) => result.map_err(GgufWriteError::Io),
    }
}

/// Zero bytes that bring `len` to the alignment.
fn padding(len: usize) -> usize {
    len.next_multiple_of(ALIGNMENT) - len
}

/// Everything before the data section: magic, version, counts, metadata, tensor
/// directory, padding.
fn header(metadata: &[(String, MetaValue)], tensors: &[TensorEntry]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        string(&mut b, key);
        meta_value(&mut b, value);
    }
    let mut offset = 0usize;
    for t in tensors {
        string(&mut b, &t.name);
        b.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &extent in t.shape.iter().rev() {
            b.extend_from_slice(&(extent as u64).to_le_bytes());
        }
        b.extend_from_slice(&t.kind.id().to_le_bytes());
        b.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += t.byte_len().next_multiple_of(ALIGNMENT);
    }
    b.resize(b.len().next_multiple_of(ALIGNMENT), 0);
    b
}

/// A `u64`-length-prefixed string.
fn string(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// A value's kind, then the value.
fn meta_value(b: &mut Vec<u8>, value: &MetaValue) {
    let array = |b: &mut Vec<u8>, kind: u32, len: usize| {
        b.extend_from_slice(&KIND_ARRAY.to_le_bytes());
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&(len as u64).to_le_bytes());
    };
    match value {
        MetaValue::U32(v) => {
            b.extend_from_slice(&KIND_U32.to_le_bytes());
            b.extend_from_slice(&v.to_le_bytes());
        }
        MetaValue::F32(v) => {
            b.extend_from_slice(&KIND_F32.to_le_bytes());
            b.extend_from_slice(&v.to_le_bytes());
        }
        MetaValue::Bool(v) => {
            b.extend_from_slice(&KIND_BOOL.to_le_bytes());
            b.push(u8::from(*v));
        }
        MetaValue::Str(s) => {
            b.extend_from_slice(&KIND_STRING.to_le_bytes());
            string(b, s);
        }
        MetaValue::Strs(items) => {
            array(b, KIND_STRING, items.len());
            items.iter().for_each(|s| string(b, s));
        }
        MetaValue::F32s(items) => {
            array(b, KIND_F32, items.len());
            items
                .iter()
                .for_each(|v| b.extend_from_slice(&v.to_le_bytes()));
        }
        MetaValue::I32s(items) => {
            array(b, KIND_I32, items.len());
            items
                .iter()
                .for_each(|v| b.extend_from_slice(&v.to_le_bytes()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufFile, Value};

    #[test]
    fn a_written_file_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let metadata = vec![
            (
                "general.architecture".to_string(),
                MetaValue::Str("llama".into()),
            ),
            ("a.u".to_string(), MetaValue::U32(7)),
            ("a.f".to_string(), MetaValue::F32(0.5)),
            ("a.b".to_string(), MetaValue::Bool(true)),
            (
                "a.s".to_string(),
                MetaValue::Strs(vec!["x".into(), "yz".into()]),
            ),
            ("a.i".to_string(), MetaValue::I32s(vec![-1, 3])),
            ("a.g".to_string(), MetaValue::F32s(vec![1.5])),
        ];
        let tensors = vec![
            TensorEntry {
                name: "v".into(),
                shape: vec![3],
                kind: GgmlType::F32,
            },
            TensorEntry {
                name: "m".into(),
                shape: vec![2, 32],
                kind: GgmlType::Q8_0,
            },
        ];
        let payloads = [vec![1u8; 12], vec![2u8; 68]];
        write_gguf(&path, &metadata, &tensors, |i| Ok(payloads[i].clone())).unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.metadata["a.u"], Value::Uint(7));
        assert_eq!(file.metadata["a.f"], Value::Float(0.5));
        assert_eq!(file.metadata["a.b"], Value::Bool(true));
        assert_eq!(
            file.metadata["a.i"],
            Value::Array(vec![Value::Int(-1), Value::Int(3)])
        );
        assert_eq!(file.tensors["m"].shape, vec![2, 32]);
        assert_eq!(file.bytes(&file.tensors["v"]), &payloads[0][..]);
        assert_eq!(file.bytes(&file.tensors["m"]), &payloads[1][..]);
    }

    #[test]
    fn a_failing_or_short_payload_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let tensors = vec![TensorEntry {
            name: "v".into(),
            shape: vec![3],
            kind: GgmlType::F32,
        }];
        let err = write_gguf(&path, &[], &tensors, |_| Err("no".into())).unwrap_err();
        assert_eq!(err.to_string(), "no");
        let err = write_gguf(&path, &[], &tensors, |_| Ok(vec![0; 4])).unwrap_err();
        assert!(err.to_string().contains("12 expected"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
