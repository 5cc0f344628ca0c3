//! The checks a `torch.save` zip passes before burn-store reads anything from it.
//!
//! burn-store sizes its buffers by an entry's declared length and fills a missing or short
//! storage with zeros. So, from the archive's directory and the pickle alone
//! ([`super::pickle_scan`]): every entry must be stored uncompressed (as `torch.save` writes
//! them) and fit in the file, every storage the pickle references must be there with the
//! bytes it declares, and every tensor must lie inside its storage.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use super::llama2c_bin::element_count;
use super::pickle_scan::{scan, Scan};
use super::CheckpointError;

fn corrupt(path: &Path, detail: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Checks the archive at `path` and its storages (see the module documentation), and returns
/// what its pickle references, for [`check_tensor_extents`].
pub(super) fn check(path: &Path) -> Result<Scan, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut archive = ZipArchive::new(BufReader::new(file))
        .map_err(|e| corrupt(path, format!("not a readable zip archive: {e}")))?;
    // (name, uncompressed size) of every entry, checked before anything is read.
    let mut entries = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| corrupt(path, format!("zip entry {i}: {e}")))?;
        let name = entry.name().to_string();
        if entry.compression() != CompressionMethod::Stored {
            return Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                detail: format!(
                    "zip entry `{name}` is compressed ({}); torch.save stores its entries \
                     uncompressed",
                    entry.compression()
                ),
            });
        }
        if entry.size() > file_len {
            return Err(corrupt(
                path,
                format!(
                    "zip entry `{name}` declares {} bytes, more than the whole file ({file_len})",
                    entry.size()
                ),
            ));
        }
        entries.push((name, entry.size()));
    }
    let pickle_name = pickle_entry(&entries)
        .ok_or_else(|| CheckpointError::UnknownFormat {
            path: path.to_path_buf(),
            detail: "a zip archive without data.pkl: not a torch.save checkpoint".into(),
        })?
        .to_string();
    let mut pickle = Vec::new();
    archive
        .by_name(&pickle_name)
        .and_then(|mut entry| entry.read_to_end(&mut pickle).map_err(Into::into))
        .map_err(|e| corrupt(path, format!("cannot read `{pickle_name}`: {e}")))?;
    let scan = scan(&pickle).map_err(|e| corrupt(path, format!("`{pickle_name}`: {e}")))?;
    check_storages(path, &entries, &scan)?;
    Ok(scan)
}

/// The pickle burn-store reads: `data.pkl`, `archive/data.pkl`, else the first `*data.pkl`.
fn pickle_entry(entries: &[(String, u64)]) -> Option<&str> {
    ["data.pkl", "archive/data.pkl"]
        .into_iter()
        .find(|name| entries.iter().any(|(n, _)| n == name))
        .or_else(|| {
            entries
                .iter()
                .map(|(n, _)| n.as_str())
                .find(|n| n.ends_with("data.pkl"))
        })
}

/// Every referenced storage is an entry (`data/KEY` or `…/data/KEY`, as burn-store finds it)
/// holding at least the bytes the pickle declares.
fn check_storages(
    path: &Path,
    entries: &[(String, u64)],
    scan: &Scan,
) -> Result<(), CheckpointError> {
    for storage in scan.storages.values() {
        let key = &storage.key;
        let exact = format!("data/{key}");
        let nested = format!("/data/{key}");
        let size = entries
            .iter()
            .find(|(n, _)| *n == exact || n.ends_with(&nested))
            .map(|&(_, size)| size)
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!(
                        "storage {key} is missing from the archive (no `data/{key}` entry); \
                         its tensors would read as zeros"
                    ),
                )
            })?;
        let needed = storage.numel.checked_mul(storage.element_size as u64);
        if needed.is_none_or(|needed| size < needed) {
            return Err(corrupt(
                path,
                format!(
                    "storage {key} holds {size} bytes, its {} elements of {} bytes need more",
                    storage.numel, storage.element_size
                ),
            ));
        }
    }
    Ok(())
}

/// Every tensor lies inside its storage (burn-store pads one that does not with zeros).
pub(super) fn check_tensor_extents(path: &Path, scan: &Scan) -> Result<(), CheckpointError> {
    for tensor in &scan.tensors {
        let Some(storage) = scan.storages.get(&tensor.storage) else {
            continue; // every tensor's storage was recorded with it
        };
        let shape: Vec<usize> = tensor.shape.iter().map(|&d| d as usize).collect();
        let end = element_count(&shape)
            .and_then(|n| (n as u64).checked_add(tensor.offset))
            .filter(|_| tensor.shape.iter().all(|&d| usize::try_from(d).is_ok()));
        if end.is_none_or(|end| end > storage.numel) {
            return Err(corrupt(
                path,
                format!(
                    "tensor `{}` of shape {:?} at offset {} reads past its storage {} \
                     ({} elements)",
                    tensor.name, tensor.shape, tensor.offset, storage.key, storage.numel
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Cursor, Read};

    /// The contents of the first entry of the zip `bytes` whose name ends with `suffix`.
    pub(crate) fn entry_ending(bytes: &[u8], suffix: &str) -> Vec<u8> {
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let name = archive
            .file_names()
            .find(|n| n.ends_with(suffix))
            .unwrap()
            .to_string();
        let mut out = Vec::new();
        archive
            .by_name(&name)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn the_fixture_checkpoints_pass() {
        for file in ["stories260K.pt", "stories260K-llama2c.pt"] {
            let path = crate::fixtures::fixture(&format!("models/stories260K/{file}"));
            super::check(&path).unwrap();
        }
    }
}
