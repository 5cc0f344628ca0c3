//! What a `torch.save` pickle says about its tensor storages, read before any tensor is: every
//! storage it references (key, element size, element count) and every tensor it rebuilds from
//! one (storage, offset, shape), so that [`super::torch_archive`] can check them against the
//! archive's entries.
//!
//! burn-store's reader turns a missing storage, or one shorter than its tensor, into zeros
//! without a word; its tensor snapshots do not say which storage they read. This scanner is a
//! stack machine over the data opcodes `torch.save` writes (protocol 2 to 4). It builds no
//! Python object and calls nothing: a class a pickle names is only a pair of strings, and the
//! rebuild call it recognises is `torch._utils._rebuild_tensor_v2` (or the legacy
//! `_rebuild_tensor`). Values are reference-counted, so a pickle that re-uses memoized values
//! costs no copies.

use std::collections::BTreeMap;
use std::rc::Rc;

use burn_store::pytorch::pickle_reader::storage_type_to_element_size;

/// A storage a pickle references (`persistent_load(('storage', FloatStorage, key, location,
/// numel))`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StorageRef {
    pub key: String,
    /// Bytes per element of the storage's type.
    pub element_size: usize,
    /// Elements the storage holds, as the pickle declares.
    pub numel: u64,
}

/// A tensor the pickle rebuilds: `numel(shape)` elements of `storage` from `offset` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TensorRef {
    /// The dict key it was stored under (`<unnamed>` when none).
    pub name: String,
    pub storage: String,
    pub offset: u64,
    pub shape: Vec<u64>,
}

/// Storages by key, and the tensors built from them.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub storages: BTreeMap<String, StorageRef>,
    pub tensors: Vec<TensorRef>,
}

#[derive(Debug, Clone)]
enum Value {
    Mark,
    Str(Rc<str>),
    Int(i64),
    Tuple(Rc<[Value]>),
    Global(Rc<str>, Rc<str>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// Anything the scan does not look into (dicts, lists, floats, other calls).
    Other,
}

/// Reads `pickle`, returning what it references, or why it cannot be read.
pub(super) fn scan(pickle: &[u8]) -> Result<Scan, String> {
    let mut machine = Machine {
        input: pickle,
        pos: 0,
        stack: Vec::new(),
        memo: BTreeMap::new(),
        scan: Scan::default(),
    };
    while !machine.step()? {}
    Ok(machine.scan)
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: BTreeMap<u64, Value>,
    scan: Scan,
}

impl Machine<'_> {
    fn take(&mut self, n: u64) -> Result<&[u8], String> {
        let start = self.pos;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|&end| end <= self.input.len())
            .ok_or_else(|| format!("pickle ends inside an opcode at byte {start}"))?;
        self.pos = end;
        Ok(&self.input[start..end])
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        let bytes = self.take(n as u64)?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b)))
    }

    fn line(&mut self) -> Result<Rc<str>, String> {
        let rest = &self.input[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("pickle ends inside a GLOBAL")?;
        let text = String::from_utf8_lossy(&rest[..end]).into();
        self.pos += end + 1;
        Ok(text)
    }

    fn text(&mut self, len_bytes: usize) -> Result<Value, String> {
        let len = self.uint(len_bytes)?;
        let bytes = self.take(len)?;
        Ok(Value::Str(String::from_utf8_lossy(bytes).into()))
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn pop_to_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("pickle has no MARK to pop to")?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top(&self) -> Result<Value, String> {
        self.stack
            .last()
            .cloned()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    /// Runs one opcode; `true` at STOP.
    fn step(&mut self) -> Result<bool, String> {
        let at = self.pos;
        let op = self.take(1)?[0];
        match op {
            b'.' => return Ok(true),
            0x80 => {
                self.take(1)?; // PROTO
            }
            0x95 => {
                self.take(8)?; // FRAME
            }
            b'q' | b'r' | 0x94 => {
                let index = match op {
                    b'q' => self.uint(1)?,
                    b'r' => self.uint(4)?,
                    _ => self.memo.len() as u64,
                };
                let top = self.top()?;
                self.memo.insert(index, top);
            }
            b'a' | b'b' | b'0' => {
                self.pop()?; // APPEND, BUILD, POP
            }
            b'e' | 0x90 | b'1' => {
                self.pop_to_mark()?; // APPENDS, ADDITEMS, POP_MARK
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.name(&key, &value);
            }
            b'u' => {
                let items = self.pop_to_mark()?;
                for pair in items.chunks(2) {
                    if let [key, value] = pair {
                        self.name(key, value);
                    }
                }
            }
            _ => {
                let value = self.value(op, at)?;
                self.stack.push(value);
            }
        }
        Ok(false)
    }

    /// The value an opcode that pushes one pushes.
    fn value(&mut self, op: u8, at: usize) -> Result<Value, String> {
        Ok(match op {
            b'(' => Value::Mark,
            b'}' | b']' | b'N' | 0x88 | 0x89 | 0x8f => Value::Other,
            b')' => Value::Tuple(Rc::from(Vec::new())),
            b'J' => Value::Int(i64::from(self.uint(4)? as u32 as i32)),
            b'K' => Value::Int(self.uint(1)? as i64),
            b'M' => Value::Int(self.uint(2)? as i64),
            0x8a | 0x8b => {
                let len = self.uint(if op == 0x8a { 1 } else { 4 })?;
                let bytes = self.take(len)?;
                Value::Int(little_endian_signed(bytes))
            }
            b'G' => {
                self.take(8)?;
                Value::Other
            }
            b'X' | b'T' | b'B' => self.text(4)?,
            0x8c | b'U' | b'C' => self.text(1)?,
            0x8d | 0x8e => self.text(8)?,
            b'c' => Value::Global(self.line()?, self.line()?),
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => Value::Global(m, n),
                    _ => Value::Other,
                }
            }
            b'h' | b'j' => {
                let index = self.uint(if op == b'h' { 1 } else { 4 })?;
                self.memo
                    .get(&index)
                    .cloned()
                    .ok_or_else(|| format!("pickle reads memo slot {index}, never written"))?
            }
            b't' => Value::Tuple(self.pop_to_mark()?.into()),
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let at = self
                    .stack
                    .len()
                    .checked_sub(n)
                    .ok_or("pickle stack underflow")?;
                Value::Tuple(self.stack.split_off(at).into())
            }
            b'l' | b'd' | 0x91 => {
                self.pop_to_mark()?; // LIST, DICT, FROZENSET
                Value::Other
            }
            0x92 => {
                self.pop()?; // NEWOBJ_EX: class, args, kwargs
                self.pop()?;
                self.pop()?;
                Value::Other
            }
            b'2' => self.top()?, // DUP
            b'Q' => {
                let pid = self.pop()?;
                self.storage(&pid)?
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.call(&callable, &args)
            }
            other => {
                return Err(format!(
                    "pickle opcode 0x{other:02x} at byte {at} is not one torch.save writes"
                ))
            }
        })
    }

    /// A persistent id `('storage', class, key, location, numel)`.
    fn storage(&mut self, pid: &Value) -> Result<Value, String> {
        let Value::Tuple(items) = pid else {
            return Err("a persistent id that is not a tuple".into());
        };
        let class = match items.get(1) {
            Some(Value::Global(_, name) | Value::Str(name)) => name.clone(),
            _ => return Err("a storage without a type".into()),
        };
        let (Some(Value::Str(key)), Some(&Value::Int(numel))) = (items.get(2), items.get(4)) else {
            return Err(format!("storage of type {class} without a key and size"));
        };
        let element_size = storage_type_to_element_size(&class)?;
        let numel =
            u64::try_from(numel).map_err(|_| format!("storage {key} has {numel} elements"))?;
        let storage = StorageRef {
            key: key.to_string(),
            element_size,
            numel,
        };
        if let Some(known) = self.scan.storages.get(&storage.key) {
            if *known != storage {
                return Err(format!("storage {key} is declared twice, differently"));
            }
        }
        self.scan
            .storages
            .insert(storage.key.clone(), storage.clone());
        Ok(Value::Storage(Rc::new(storage)))
    }

    /// A REDUCE: a tensor rebuild is recorded, anything else is opaque.
    fn call(&mut self, callable: &Value, args: &Value) -> Value {
        let rebuild = matches!(callable, Value::Global(m, n)
            if &**m == "torch._utils" && (&**n == "_rebuild_tensor_v2" || &**n == "_rebuild_tensor"));
        let (true, Value::Tuple(args)) = (rebuild, args) else {
            return Value::Other;
        };
        let (Some(Value::Storage(storage)), Some(&Value::Int(offset)), Some(Value::Tuple(dims))) =
            (args.first(), args.get(1), args.get(2))
        else {
            return Value::Other;
        };
        let shape: Option<Vec<u64>> = dims
            .iter()
            .map(|d| match d {
                Value::Int(v) => u64::try_from(*v).ok(),
                _ => None,
            })
            .collect();
        let (Some(shape), Ok(offset)) = (shape, u64::try_from(offset)) else {
            return Value::Other;
        };
        Value::Tensor(Rc::new(TensorRef {
            name: "<unnamed>".into(),
            storage: storage.key.clone(),
            offset,
            shape,
        }))
    }

    /// A dict entry: a tensor set under a string key is recorded under that name.
    fn name(&mut self, key: &Value, value: &Value) {
        if let Value::Tensor(tensor) = value {
            let name = match key {
                Value::Str(name) => name.to_string(),
                _ => tensor.name.clone(),
            };
            self.scan.tensors.push(TensorRef {
                name,
                ..(**tensor).clone()
            });
        }
    }
}

/// A little-endian two's-complement integer (LONG1/LONG4), saturated to i64.
fn little_endian_signed(bytes: &[u8]) -> i64 {
    if bytes.len() > 8 {
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        return if negative { i64::MIN } else { i64::MAX };
    }
    let mut buf = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
        [0xff; 8]
    } else {
        [0; 8]
    };
    buf[..bytes.len()].copy_from_slice(bytes);
    i64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_storages_and_tensors_of_the_fixture_checkpoints() {
        for file in ["stories260K.pt", "stories260K-llama2c.pt"] {
            let path = crate::fixtures::fixture(&format!("models/stories260K/{file}"));
            let bytes = std::fs::read(&path).unwrap();
            let pickle = crate::checkpoint::torch_archive::tests::entry_ending(&bytes, "data.pkl");
            let scan = scan(&pickle).unwrap();
            assert!(!scan.storages.is_empty(), "{file}");
            let norm = scan
                .tensors
                .iter()
                .find(|t| t.name.ends_with("layers.4.ffn_norm.weight"))
                .unwrap_or_else(|| panic!("{file}: {:?}", scan.tensors));
            assert_eq!(norm.shape, vec![64]);
            let storage = &scan.storages[&norm.storage];
            assert_eq!(storage.element_size, 4);
            assert!(norm.offset + 64 <= storage.numel);
        }
    }

    #[test]
    fn truncated_or_foreign_pickles_are_errors() {
        assert!(scan(b"").is_err());
        assert!(scan(b"\x80\x02X\xff\xff\xff\x7f").is_err());
        assert!(scan(b"h\x05.").is_err());
        assert!(scan(b"\x80\x02I1\n.").is_err());
        assert_eq!(little_endian_signed(&[0xff]), -1);
        assert_eq!(little_endian_signed(&[0x00, 0x01]), 256);
    }
}
