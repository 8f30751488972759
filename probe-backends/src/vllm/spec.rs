//! [`ServerSpec`]: one vLLM server to start — where ([`ServerDevice`]), on which port, with
//! which memory share and limits — from the planner's generation plan or cycled over GPUs.

use std::fmt;

use probe_core::plan::GenerationPlan;
use probe_core::{Error, Result};

/// Where a server runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerDevice {
    /// The CPU (vLLM's CPU build: `VLLM_TARGET_DEVICE=cpu`, no CUDA device visible).
    Cpu,
    /// A CUDA device by index (`CUDA_VISIBLE_DEVICES=<index>`).
    Gpu(usize),
    /// Several CUDA devices for one tensor-parallel server (`CUDA_VISIBLE_DEVICES=a,b`,
    /// `--tensor-parallel-size` = their number).
    Gpus(Vec<usize>),
}

impl fmt::Display for ServerDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerDevice::Cpu => f.write_str("cpu"),
            ServerDevice::Gpu(i) => write!(f, "cuda:{i}"),
            ServerDevice::Gpus(g) => {
                let list: Vec<String> = g.iter().map(|i| format!("cuda:{i}")).collect();
                f.write_str(&list.join("+"))
            }
        }
    }
}

/// One server to start.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ServerSpec {
    /// Where it runs.
    pub device: ServerDevice,
    /// Its port on the launcher's host.
    pub port: u16,
    /// vLLM's `--gpu-memory-utilization`: the share of the GPU (on the CPU build: of RAM) this
    /// server may take. Servers sharing a GPU must add up to less than 1.
    pub gpu_memory_utilization: f64,
    /// `--max-model-len`, when set.
    pub max_model_len: Option<u32>,
    /// `--max-num-seqs`, when set.
    pub max_num_seqs: Option<u32>,
    /// More arguments for this server only.
    pub extra_args: Vec<String>,
}

impl ServerSpec {
    /// A server on GPU `index` at `port`, taking 90 % of the GPU.
    pub fn gpu(index: usize, port: u16) -> Self {
        Self {
            device: ServerDevice::Gpu(index),
            port,
            gpu_memory_utilization: 0.9,
            max_model_len: None,
            max_num_seqs: None,
            extra_args: Vec::new(),
        }
    }
    /// A server on the CPU at `port`, reserving 10 % of RAM.
    pub fn cpu(port: u16) -> Self {
        Self { device: ServerDevice::Cpu, gpu_memory_utilization: 0.1, ..Self::gpu(0, port) }
    }
    /// Sets `--gpu-memory-utilization`.
    pub fn with_gpu_memory_utilization(mut self, u: f64) -> Self {
        self.gpu_memory_utilization = u;
        self
    }
    /// Sets `--max-model-len`.
    pub fn with_max_model_len(mut self, n: u32) -> Self {
        self.max_model_len = Some(n);
        self
    }
    /// Sets `--max-num-seqs`.
    pub fn with_max_num_seqs(mut self, n: u32) -> Self {
        self.max_num_seqs = Some(n);
        self
    }
    /// Adds arguments for this server.
    pub fn with_extra_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// One server per entry of the planner's generation plan, on its GPUs (tensor-parallel
    /// when it has several), with its memory share, `--max-model-len`, `--max-num-seqs` and
    /// `--block-size`, at ports `base_port`, `base_port + 1`, ….
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a plan without servers, a server without a GPU, or ports
    /// past 65535.
    pub fn from_plan(plan: &GenerationPlan, base_port: u16) -> Result<Vec<Self>> {
        if plan.servers.is_empty() {
            return Err(Error::invalid("generation plan", "no vLLM server planned"));
        }
        if usize::from(base_port) + plan.servers.len() - 1 > usize::from(u16::MAX) {
            return Err(Error::invalid(
                "vllm port",
                format!("{base_port} + {} servers passes 65535", plan.servers.len()),
            ));
        }
        plan.servers
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let device = match p.gpus.as_slice() {
                    [] => return Err(Error::invalid("generation plan", format!("server {k} has no GPU"))),
                    [g] => ServerDevice::Gpu(*g),
                    many => ServerDevice::Gpus(many.to_vec()),
                };
                let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
                let mut s = Self::gpu(0, base_port + k as u16)
                    .with_gpu_memory_utilization(p.gpu_memory_utilization)
                    .with_max_model_len(clamp(p.max_model_len))
                    .with_max_num_seqs(clamp(p.max_num_seqs));
                s.device = device;
                if p.block_size > 0 {
                    s.extra_args.extend(["--block-size".to_owned(), p.block_size.to_string()]);
                }
                Ok(s)
            })
            .collect()
    }

    /// `servers` servers cycled over `gpus` (server `k` on `gpus[k % gpus.len()]`, port
    /// `base_port + k`), the servers on one GPU sharing `total_utilization` of it equally.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no GPU, no server, a utilization outside (0, 1], or ports
    /// past 65535.
    pub fn cycle(gpus: &[usize], servers: usize, base_port: u16, total_utilization: f64) -> Result<Vec<Self>> {
        if gpus.is_empty() {
            return Err(Error::invalid("generation gpus", "no GPU to place vLLM servers on"));
        }
        if servers == 0 {
            return Err(Error::invalid("vllm servers", "0 (must be ≥ 1)"));
        }
        if !(total_utilization > 0.0 && total_utilization <= 1.0) {
            return Err(Error::invalid("gpu_memory_utilization", format!("{total_utilization} (must be in (0, 1])")));
        }
        let last = usize::from(base_port) + servers - 1;
        if last > usize::from(u16::MAX) {
            return Err(Error::invalid("vllm port", format!("{base_port} + {servers} servers passes port 65535")));
        }
        (0..servers)
            .map(|k| {
                let gpu = gpus[k % gpus.len()];
                let sharing = (0..servers).filter(|j| gpus[j % gpus.len()] == gpu).count();
                let util = ((total_utilization / sharing as f64) * 1000.0).floor() / 1000.0;
                Ok(Self::gpu(gpu, base_port + k as u16).with_gpu_memory_utilization(util))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vllm::VllmLauncher;

    #[test]
    fn cycling_places_servers_round_robin_and_shares_memory() {
        let specs = ServerSpec::cycle(&[2, 3], 5, 8000, 0.9).unwrap();
        let got: Vec<_> = specs.iter().map(|s| (s.device.clone(), s.port, s.gpu_memory_utilization)).collect();
        use ServerDevice::Gpu;
        assert_eq!(
            got,
            vec![
                (Gpu(2), 8000, 0.3),
                (Gpu(3), 8001, 0.45),
                (Gpu(2), 8002, 0.3),
                (Gpu(3), 8003, 0.45),
                (Gpu(2), 8004, 0.3)
            ]
        );
        let one = ServerSpec::cycle(&[0], 1, 9000, 0.85).unwrap();
        assert_eq!(one[0].gpu_memory_utilization, 0.85);
        assert!(ServerSpec::cycle(&[], 1, 1, 0.9).is_err());
        assert!(ServerSpec::cycle(&[0], 0, 1, 0.9).is_err());
        assert!(ServerSpec::cycle(&[0], 1, 1, 1.5).is_err());
        assert!(ServerSpec::cycle(&[0], 3, 65534, 0.9).is_err(), "ports past 65535");
    }

    #[test]
    fn specs_from_the_planners_generation_plan() {
        let server = |gpus: &[usize], u: f64| {
            serde_json::json!({
                "gpus": gpus, "tensor_parallel_size": gpus.len(), "gpu_memory_utilization": u,
                "max_model_len": 4608, "max_num_seqs": 32, "block_size": 16, "weights_bytes": 1,
                "non_torch_bytes": 1, "activation_peak_bytes": 1, "kv_cache_bytes": 1, "kv_blocks": 1, "kv_tokens": 16
            })
        };
        let plan: GenerationPlan = serde_json::from_value(serde_json::json!({
            "gpus": [0, 1, 2], "servers": [server(&[0], 0.45), server(&[0], 0.45), server(&[1, 2], 0.9)],
            "prompt_tokens": 100, "batch_size": 32, "max_new_tokens_requested": 4096, "max_new_tokens": 4096
        }))
        .expect("a GenerationPlan in the planner's JSON form");
        let specs = ServerSpec::from_plan(&plan, 9000).unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!((specs[1].device.clone(), specs[1].port), (ServerDevice::Gpu(0), 9001));
        assert_eq!(specs[2].device, ServerDevice::Gpus(vec![1, 2]));
        assert_eq!((specs[0].max_model_len, specs[0].max_num_seqs), (Some(4608), Some(32)));
        let l = VllmLauncher::builder("m").servers(specs).build().unwrap();
        let c = &l.dry_run()[2];
        assert!(c.env.contains(&("CUDA_VISIBLE_DEVICES".into(), "1,2".into())), "{c}");
        let line = c.to_string();
        assert!(line.contains("--gpu-memory-utilization 0.9 --tensor-parallel-size 2"), "{line}");
        assert!(line.contains("--block-size 16") && line.contains("vllm-gpu1-2-port9002.log"), "{line}");
    }
}
