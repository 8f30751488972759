//! The readable forms of a plan: [`Plan`] and [`PagedPlan`] print as the tables `probe plan`
//! shows.

use std::fmt::{self, Display, Formatter};

use super::paged::PagedPlan;
use super::request::Plan;
use super::units::gib;

impl Display for Plan {
    /// The model's figures, the phases, one row per vLLM server and per extraction worker's
    /// share, bytes per device, and the planner's notes.
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let m = &self.model;
        let sliding = if m.sliding_layers > 0 {
            format!(" · {} of {} layers slide", m.sliding_layers, m.layers)
        } else {
            String::new()
        };
        writeln!(
            f,
            "model: {} · {:.2} B parameters · {} weights {} · KV {} KiB/token ({}){sliding}",
            m.architecture,
            m.params as f64 / 1e9,
            m.dtype,
            gib(m.weights_bytes),
            m.kv_bytes_per_token / 1024,
            m.kv_dtype,
        )?;
        let phases =
            if self.time_shared { "time-shared (generate, stop servers, extract)" } else { "exclusive (concurrent)" };
        writeln!(f, "phases: {phases}")?;
        if let Some(g) = &self.generation {
            writeln!(
                f,
                "\ngeneration on GPUs {:?}: max_new_tokens {} (asked {}), {} sequences × {} prompt tokens per server",
                g.gpus, g.max_new_tokens, g.max_new_tokens_requested, g.batch_size, g.prompt_tokens
            )?;
            let head = [
                "server GPUs",
                "tp",
                "util",
                "max_len",
                "max_seqs",
                "weights",
                "non-torch",
                "act peak",
                "KV cache",
                "blocks",
                "KV tokens",
            ];
            server_row(f, head.map(String::from))?;
            for s in &g.servers {
                server_row(
                    f,
                    [
                        format!("{:?}", s.gpus),
                        s.tensor_parallel_size.to_string(),
                        format!("{:.2}", s.gpu_memory_utilization),
                        s.max_model_len.to_string(),
                        s.max_num_seqs.to_string(),
                        gib(s.weights_bytes),
                        gib(s.non_torch_bytes),
                        gib(s.activation_peak_bytes),
                        gib(s.kv_cache_bytes),
                        s.kv_blocks.to_string(),
                        s.kv_tokens.to_string(),
                    ],
                )?;
            }
        }
        if let Some(e) = &self.extraction {
            let on = if e.gpus.is_empty() { "the CPU".to_string() } else { format!("GPUs {:?}", e.gpus) };
            writeln!(
                f,
                "\nextraction on {on}: batch {} × {} tokens (longest single input {}), {} layers, working set {}, reserve {}{}",
                e.batch_size,
                e.seq_len,
                e.max_seq_len,
                e.layers,
                gib(e.working_set_bytes),
                gib(e.reserve_bytes),
                if e.cpu_offload { " · CPU offload" } else { "" }
            )?;
            let row = |f: &mut Formatter<'_>, c: [&str; 6]| {
                writeln!(f, "  {:<7} {:<7} {:>12} {:>7} {:>10} {:>10}", c[0], c[1], c[2], c[3], c[4], c[5])
            };
            row(f, ["worker", "device", "layers", "edges", "weights", "working"])?;
            for (i, w) in e.workers.iter().enumerate() {
                for s in &w.shares {
                    let edges = match (s.embedding, s.head) {
                        (true, true) => "emb+head",
                        (true, false) => "emb",
                        (false, true) => "head",
                        _ => "",
                    };
                    let range = if s.num_layers == 0 {
                        "-".to_string()
                    } else {
                        format!("{}..{}", s.first_layer, s.first_layer + s.num_layers)
                    };
                    let (weights, working) = (gib(s.weights_bytes), gib(s.working_set_bytes));
                    row(f, [&i.to_string(), &s.device, &range, edges, &weights, &working])?;
                }
            }
        }
        writeln!(f, "\n  {:<7} {:>11} {:>11} {:>11}", "device", "total", "generation", "extraction")?;
        for d in self.devices.iter().filter(|d| d.total_bytes > 0 || d.extraction_bytes > 0) {
            let (total, generation, extraction) =
                (gib(d.total_bytes), gib(d.generation_bytes), gib(d.extraction_bytes));
            writeln!(f, "  {:<7} {total:>11} {generation:>11} {extraction:>11}", d.device)?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// One row of the vLLM servers' table.
fn server_row(f: &mut Formatter<'_>, c: [String; 11]) -> fmt::Result {
    writeln!(
        f,
        "  {:<12} {:>3} {:>6} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
    )
}

impl Display for PagedPlan {
    /// The engine's settings, its memory per device, and each halving that made it fit.
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "paged engine: max_seqs {} · page_size {} · max_pages {} · max_prefill_size {}",
            self.max_seqs, self.page_size, self.max_pages, self.max_prefill_size
        )?;
        writeln!(
            f,
            "  weights {} + KV pages {} per device; prefill scratch {:.2} MiB",
            gib(self.weights_bytes),
            gib(self.kv_bytes),
            self.scratch_bytes as f64 / (1u64 << 20) as f64
        )?;
        for step in &self.steps {
            writeln!(f, "  halved: {step}")?;
        }
        Ok(())
    }
}
