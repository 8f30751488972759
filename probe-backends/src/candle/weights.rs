//! The weights a model loads, read tensor by tensor with positioned reads from its
//! safetensors files: only the tensors a load asks for are read, and no file stays mapped, so
//! a model that loads a few blocks (extraction up to a layer) holds, and its peak RSS counts,
//! only those. Such a model reads its embedding row by row too ([`Rows`]): a batch reads the
//! rows of its tokens, and the table is never held.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use probe_core::{Error, Result};

/// Where one tensor lies in its file.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    /// Byte range in the file.
    start: u64,
    end: u64,
}

/// Every tensor of a model's weight files, from their checked headers.
#[derive(Debug, Clone, Default)]
pub(crate) struct WeightIndex {
    files: Vec<PathBuf>,
    tensors: HashMap<String, Entry>,
}

impl WeightIndex {
    /// Adds the tensors of `file`, whose header (its 8-byte length and JSON, checked against
    /// the file) is `header`.
    pub(crate) fn add(&mut self, file: &Path, header: &[u8]) -> Result<()> {
        let bad = |why: String| Error::invalid("safetensors header", format!("{}: {why}", file.display()));
        let json: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header[8..]).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let data = header.len() as u64;
        let index = self.files.len();
        for (name, t) in json.into_iter().filter(|(k, _)| k != "__metadata__") {
            #[derive(serde::Deserialize)]
            struct Info {
                dtype: safetensors::Dtype,
                shape: Vec<usize>,
                data_offsets: [u64; 2],
            }
            let info: Info = serde_json::from_value(t).map_err(|e| bad(format!("tensor {name:?}: {e}")))?;
            let [start, end] = info.data_offsets;
            let entry =
                Entry { file: index, dtype: info.dtype, shape: info.shape, start: data + start, end: data + end };
            self.tensors.insert(name, entry);
        }
        self.files.push(file.to_path_buf());
        Ok(())
    }

    /// A reader of these tensors (the files opened).
    ///
    /// # Errors
    /// [`Error::Io`] for a file that cannot be opened.
    pub(crate) fn reader(self: &Arc<Self>) -> Result<Reader> {
        let files: Result<Vec<File>> =
            self.files.iter().map(|f| File::open(f).map_err(|e| Error::io(f.display(), e))).collect();
        Ok(Reader { index: self.clone(), files: files? })
    }

    /// A reader of the rows of the 2-D tensor `name`, stored in f32, bf16 or f16 (`None` for
    /// another dtype or shape, or a tensor it lacks).
    ///
    /// # Errors
    /// [`Error::Io`] for its file that cannot be opened.
    pub(crate) fn rows(&self, name: &str) -> Result<Option<Rows>> {
        use safetensors::Dtype as D;
        let Some(e) = self.tensors.get(name).filter(|e| e.shape.len() == 2) else { return Ok(None) };
        if !matches!(e.dtype, D::F32 | D::BF16 | D::F16) {
            return Ok(None);
        }
        let path = &self.files[e.file];
        let file = File::open(path).map_err(|err| Error::io(path.display(), err))?;
        Ok(Some(Rows { file, entry: e.clone(), name: name.to_owned() }))
    }
}

/// The rows of one `[rows, width]` tensor, read on demand with positioned reads.
#[derive(Debug)]
pub(crate) struct Rows {
    file: File,
    entry: Entry,
    name: String,
}

impl Rows {
    /// `[rows, width]`.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.entry.shape[0], self.entry.shape[1])
    }

    /// Rows `ids` (`[ids.len(), width]`, in `dtype` on `device`), each distinct row read once.
    pub(crate) fn read(&self, ids: &[u32], dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        use safetensors::Dtype as D;
        match self.entry.dtype {
            D::F32 => self.read_as::<f32>(ids, dtype, device),
            D::BF16 => self.read_as::<half::bf16>(ids, dtype, device),
            D::F16 => self.read_as::<half::f16>(ids, dtype, device),
            other => candle_core::bail!("{}: rows of {other:?} are not read one by one", self.name),
        }
    }

    fn read_as<T: bytemuck::Pod + candle_core::WithDType>(
        &self,
        ids: &[u32],
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let (rows, width) = self.shape();
        let mut distinct = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let mut values = vec![T::zeroed(); distinct.len() * width];
        let row_bytes = (width * std::mem::size_of::<T>()) as u64;
        for (&id, dst) in distinct.iter().zip(values.chunks_mut(width.max(1))) {
            if id as usize >= rows {
                candle_core::bail!("token id {id} is past the {rows} rows of {}", self.name);
            }
            self.file.read_exact_at(bytemuck::cast_slice_mut(dst), self.entry.start + u64::from(id) * row_bytes)?;
        }
        let table = Tensor::from_vec(values, (distinct.len(), width), device)?.to_dtype(dtype)?;
        let at: Vec<u32> = ids.iter().map(|id| distinct.partition_point(|d| d < id) as u32).collect();
        table.index_select(&Tensor::from_vec(at, ids.len(), device)?, 0)
    }
}

/// Reads tensors of a [`WeightIndex`] for candle's `VarBuilder`.
#[derive(Debug)]
pub(crate) struct Reader {
    index: Arc<WeightIndex>,
    files: Vec<File>,
}

impl Reader {
    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        use safetensors::Dtype as D;
        let e = self
            .index
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_owned() }.bt())?;
        let t = match e.dtype {
            D::F32 => self.read_into::<f32>(e, dev)?,
            D::BF16 => self.read_into::<half::bf16>(e, dev)?,
            D::F16 => self.read_into::<half::f16>(e, dev)?,
            _ => {
                let mut bytes = vec![0u8; (e.end - e.start) as usize];
                self.files[e.file].read_exact_at(&mut bytes, e.start)?;
                let view = safetensors::tensor::TensorView::new(e.dtype, e.shape.clone(), &bytes)
                    .map_err(|err| candle_core::Error::Msg(format!("tensor {name}: {err}")))?;
                view.load(dev)?
            }
        };
        t.to_dtype(dtype)
    }

    /// Reads a tensor straight into the buffer the tensor keeps (no second copy of it, so
    /// loading the largest tensor does not double it in memory). safetensors stores
    /// little-endian values, as the CPUs this runs on hold them.
    fn read_into<T: bytemuck::Pod + candle_core::WithDType>(
        &self,
        e: &Entry,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let n: usize = e.shape.iter().product();
        if (n * std::mem::size_of::<T>()) as u64 != e.end - e.start {
            candle_core::bail!("{} bytes for {n} values of {:?}", e.end - e.start, e.dtype)
        }
        let mut values = vec![T::zeroed(); n];
        self.files[e.file].read_exact_at(bytemuck::cast_slice_mut(&mut values), e.start)?;
        Tensor::from_vec(values, e.shape.as_slice(), dev)
    }
}

impl SimpleBackend for Reader {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.load(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            }
            .bt());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.tensors.contains_key(name)
    }
}
