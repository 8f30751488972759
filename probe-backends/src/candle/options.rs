//! [`CandleOptions`]: compute dtype, device and default batch size of a [`super::CandleBackend`].

use probe_core::{Error, Result};

/// The dtype weights are loaded in and the model computes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CandleDType {
    /// 32-bit float (the default; what the fidelity tests check).
    #[default]
    F32,
    /// bfloat16 (norms and softmax still accumulate in f32).
    BF16,
    /// IEEE half precision.
    F16,
}

impl CandleDType {
    /// The name used in [`probe_core::ModelInfo::dtype`] and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CandleDType::F32 => "f32",
            CandleDType::BF16 => "bf16",
            CandleDType::F16 => "f16",
        }
    }

    pub(crate) fn to_candle(self) -> candle_core::DType {
        match self {
            CandleDType::F32 => candle_core::DType::F32,
            CandleDType::BF16 => candle_core::DType::BF16,
            CandleDType::F16 => candle_core::DType::F16,
        }
    }
}

impl std::str::FromStr for CandleDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(CandleDType::F32),
            "bf16" | "bfloat16" => Ok(CandleDType::BF16),
            "f16" | "float16" => Ok(CandleDType::F16),
            other => Err(Error::invalid("dtype", format!("{other:?} (expected f32, bf16 or f16)"))),
        }
    }
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CandleDevice {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal; needs the `candle-cuda` feature.
    Cuda(usize),
}

impl CandleDevice {
    pub(crate) fn open(self) -> Result<candle_core::Device> {
        match self {
            CandleDevice::Cpu => Ok(candle_core::Device::Cpu),
            CandleDevice::Cuda(i) => candle_core::Device::new_cuda(i)
                .map_err(|e| Error::DeviceUnavailable(format!("cuda:{i} for candle: {e}"))),
        }
    }
}

impl std::fmt::Display for CandleDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CandleDevice::Cpu => f.write_str("cpu"),
            CandleDevice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for CandleDevice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "cpu" {
            return Ok(CandleDevice::Cpu);
        }
        if s == "cuda" {
            return Ok(CandleDevice::Cuda(0));
        }
        match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(CandleDevice::Cuda(i)),
            _ => Err(Error::invalid("device", format!("{s:?} (expected cpu, cuda or cuda:N)"))),
        }
    }
}

/// How a [`super::CandleBackend`] loads and runs its model. `Default` is f32 on the CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CandleOptions {
    /// Compute dtype.
    pub dtype: CandleDType,
    /// Device.
    pub device: CandleDevice,
    /// Inputs per forward pass when a request leaves `batch_size` unset; in generation, the
    /// sequences decoded together.
    pub default_batch_size: usize,
    /// A layer split: the blocks of each device, in order from block 0 (empty: every block
    /// on `device`). The embedding runs on `device`, the final norm on the last share's.
    pub split: Vec<super::BlockShare>,
    /// The f32 attention scores one query chunk may hold, in bytes (`None`: the device's
    /// default, [`probe_core::plan::memory::ATTENTION_CHUNK_BYTES_CPU`] or `_GPU`, which the
    /// planner counts). Smaller saves memory on long inputs, larger saves kernel launches.
    pub attention_chunk_bytes: Option<u64>,
    /// Extraction only: load the embedding and blocks `0..n`, the final norm only when `n` is
    /// every block, and no LM head (`None`: the whole model). Layers past block `n` are
    /// refused, and so is generation.
    pub blocks: Option<usize>,
    /// Inputs that start with the same token ids (one instruction, few-shot block or chat
    /// template before each item) run those ids once per batch and go on from their keys
    /// and values, batches formed to share the most (`true`, the default; the values are
    /// those of running every input whole). `false`: every input runs whole.
    pub shared_prefixes: bool,
}

impl Default for CandleOptions {
    fn default() -> Self {
        Self {
            dtype: CandleDType::F32,
            device: CandleDevice::Cpu,
            default_batch_size: probe_core::DEFAULT_BATCH_SIZE,
            split: Vec::new(),
            attention_chunk_bytes: None,
            blocks: None,
            shared_prefixes: true,
        }
    }
}

impl CandleOptions {
    /// Sets the dtype.
    pub fn with_dtype(mut self, dtype: CandleDType) -> Self {
        self.dtype = dtype;
        self
    }
    /// Sets the device.
    pub fn with_device(mut self, device: CandleDevice) -> Self {
        self.device = device;
        self
    }
    /// Splits the blocks over devices (see [`CandleOptions::split`]).
    pub fn with_split(mut self, split: Vec<super::BlockShare>) -> Self {
        self.split = split;
        self
    }
    /// Sets the attention's chunk budget (see [`CandleOptions::attention_chunk_bytes`]).
    pub fn with_attention_chunk_bytes(mut self, bytes: Option<u64>) -> Self {
        self.attention_chunk_bytes = bytes;
        self
    }
    /// Loads only what extraction up to block `n` needs (see [`CandleOptions::blocks`]).
    pub fn with_blocks(mut self, blocks: Option<usize>) -> Self {
        self.blocks = blocks;
        self
    }
    /// Shares the prefixes inputs have in common (see [`CandleOptions::shared_prefixes`]).
    pub fn with_shared_prefixes(mut self, share: bool) -> Self {
        self.shared_prefixes = share;
        self
    }
    /// Sets the default batch size (values below 1 count as 1).
    pub fn with_default_batch_size(mut self, n: usize) -> Self {
        self.default_batch_size = n.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!("bf16".parse::<CandleDType>().expect("bf16"), CandleDType::BF16);
        assert_eq!("cuda:1".parse::<CandleDevice>().expect("cuda:1"), CandleDevice::Cuda(1));
        assert_eq!("cpu".parse::<CandleDevice>().expect("cpu").to_string(), "cpu");
        assert!("f8".parse::<CandleDType>().expect_err("f8").to_string().contains("f8"));
        assert!("gpu".parse::<CandleDevice>().is_err());
        assert_eq!(CandleOptions::default().dtype, CandleDType::F32);
    }
}
