//! The GGUF container (versions 2 and 3), parsed over a memory map: the header, the
//! metadata key/values and the tensor directory. Tensor payloads stay in the map until
//! asked for.
//!
//! Layout (little-endian): magic `GGUF`, `u32` version, `u64` tensor count, `u64` metadata
//! count; the metadata (`string` key, `u32` kind, value); the tensor infos (`string` name,
//! `u32` dims, `u64` extents innermost first, `u32` ggml type, `u64` offset); padding to
//! `general.alignment` (32 by default); the data section.
//!
//! Every count and length is checked against the bytes left in the file before anything is
//! allocated from it, so a corrupt header is an error, never a huge allocation or a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::ggml_type::GgmlType;
use super::metadata::{Cursor, Value};
use super::GgufError;

/// The first four bytes of a GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The data alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// PyTorch shape: outermost first (GGUF lists the extents innermost first).
    pub shape: Vec<usize>,
    pub kind: GgmlType,
    /// Byte range of the payload in the file.
    pub start: usize,
    pub len: usize,
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    map: Mmap,
    pub metadata: BTreeMap<String, Value>,
    /// Tensors by GGUF name, in file order of names.
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl GgufFile {
    /// Map and parse the file at `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = File::open(path)?;
        // SAFETY: the map is read-only; a file changed underneath while loading gives wrong
        // values (as any reader would), not memory unsafety in our code, which only copies
        // bytes out of it.
        let map = unsafe { Mmap::map(&file) }?;
        let (_version, metadata, tensors) = parse(&map).map_err(GgufError::Corrupt)?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            metadata,
            tensors,
        })
    }

    /// The stored bytes of `info`'s payload (checked to lie in the file at parse time).
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.map[info.start..info.start + info.len]
    }

    /// Let the kernel drop the mapped pages of `info`'s payload (they are file-backed and
    /// read-only, so this only frees memory).
    pub fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        {
            let page = 4096;
            let start = info.start.div_ceil(page) * page;
            let end = (info.start + info.len) / page * page;
            if end > start {
                // SAFETY: the mapping is read-only and file-backed; dropping pages only
                // means they are read again from the file if touched.
                let _ = unsafe {
                    self.map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
    }
}

pub type Parsed = (u32, BTreeMap<String, Value>, BTreeMap<String, TensorInfo>);

/// Parse the header, metadata and tensor directory of `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let mut cur = Cursor::new(bytes);
    let magic = cur
        .take(4)
        .map_err(|_| "too short for a GGUF header".to_string())?;
    if magic != MAGIC {
        return Err(format!(
            "bad magic {magic:02x?} (a GGUF file starts with `GGUF`)"
        ));
    }
    let version = cur.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} is not supported (versions 2 and 3 are)"
        ));
    }
    let n_tensors = cur.u64()?;
    let n_kv = cur.u64()?;
    let mut metadata = BTreeMap::new();
    for _ in 0..cur.checked_count(n_kv, 12, "metadata entries")? {
        let key = cur.string()?;
        let value = cur.value().map_err(|e| format!("metadata `{key}`: {e}"))?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return Err(format!("bad `general.alignment` {v:?} (a power of two)")),
        },
    };
    let mut infos = Vec::new();
    for _ in 0..cur.checked_count(n_tensors, 24, "tensors")? {
        infos.push(tensor_info(&mut cur)?);
    }
    let data_start = (cur.position() as u64).div_ceil(alignment) * alignment;
    let mut tensors = BTreeMap::new();
    for (name, dims, kind, offset) in infos {
        let info = place(
            &name,
            &dims,
            kind,
            offset,
            data_start,
            alignment,
            bytes.len(),
        )?;
        if tensors.insert(name.clone(), info).is_some() {
            return Err(format!("tensor `{name}` appears twice"));
        }
    }
    Ok((version, metadata, tensors))
}

/// One raw tensor-directory entry: name, extents (innermost first), type, offset.
fn tensor_info(cur: &mut Cursor<'_>) -> Result<(String, Vec<u64>, GgmlType, u64), String> {
    let name = cur.string()?;
    let n_dims = cur.u32()?;
    if n_dims == 0 || n_dims > 4 {
        return Err(format!("tensor `{name}` has {n_dims} dimensions (1 to 4)"));
    }
    let dims = (0..n_dims)
        .map(|_| cur.u64())
        .collect::<Result<Vec<_>, _>>()?;
    let raw = cur.u32()?;
    let kind = GgmlType::from_id(raw)
        .ok_or_else(|| format!("tensor `{name}` has unknown ggml type {raw}"))?;
    let offset = cur.u64()?;
    Ok((name, dims, kind, offset))
}

/// Check a tensor's extents, block fit, alignment and bounds, and give its byte range.
fn place(
    name: &str,
    dims: &[u64],
    kind: GgmlType,
    offset: u64,
    data_start: u64,
    alignment: u64,
    file_len: usize,
) -> Result<TensorInfo, String> {
    let count = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("tensor `{name}`: extents {dims:?} overflow"))?;
    let (block, block_bytes) = kind.block();
    if !dims[0].is_multiple_of(block) {
        return Err(format!(
            "tensor `{name}`: rows of {} values do not divide into {kind} blocks of {block}",
            dims[0]
        ));
    }
    if !offset.is_multiple_of(alignment) {
        return Err(format!(
            "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
        ));
    }
    let len = (count / block).checked_mul(block_bytes);
    let start = data_start.checked_add(offset);
    let end = start.zip(len).and_then(|(s, l)| s.checked_add(l));
    match (start, len, end) {
        (Some(start), Some(len), Some(end)) if end <= file_len as u64 => Ok(TensorInfo {
            shape: dims.iter().rev().map(|&d| d as usize).collect(),
            kind,
            start: start as usize,
            len: len as usize,
        }),
        _ => Err(format!(
            "tensor `{name}` ({kind}, extents {dims:?}) at offset {offset} runs past the end \
             of the file ({file_len} bytes): truncated"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal GGUF v3 file: one metadata entry and one F32 tensor of `values`.
    pub(crate) fn tiny(values: &[f32]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        };
        string(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        string(&mut b, "llama");
        string(&mut b, "t");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&(values.len() as u64).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for v in values {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_a_minimal_file() {
        let (version, meta, tensors) = parse(&tiny(&[1.0, 2.0])).unwrap();
        assert_eq!(version, 3);
        assert_eq!(meta["general.architecture"].as_str(), Some("llama"));
        assert_eq!(tensors["t"].shape, vec![2]);
        assert_eq!(tensors["t"].len, 8);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_problem() {
        let good = tiny(&[1.0, 2.0]);
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(parse(&bad_magic).unwrap_err().contains("magic"));
        let truncated = &good[..good.len() - 1];
        assert!(parse(truncated).unwrap_err().contains("truncated"));
        // A huge tensor count is refused before anything is allocated for it.
        let mut huge = good.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&huge).unwrap_err().contains("tensors"));
        let mut huge_kv = good.clone();
        huge_kv[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(parse(&huge_kv).unwrap_err().contains("metadata"));
        // An unknown ggml type: after the header (24), the metadata entry (28 + 4 + 13), the
        // tensor's name (9), dimension count (4) and extent (8).
        let type_at = 24 + 28 + 4 + 13 + 9 + 4 + 8;
        let mut unknown = good.clone();
        unknown[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
        assert!(parse(&unknown)
            .unwrap_err()
            .contains("unknown ggml type 99"));
        let mut misaligned = good.clone();
        misaligned[type_at + 4..type_at + 12].copy_from_slice(&4u64.to_le_bytes());
        assert!(parse(&misaligned).unwrap_err().contains("alignment"));
        let mut version = good;
        version[4] = 1;
        assert!(parse(&version).unwrap_err().contains("version 1"));
    }
}
