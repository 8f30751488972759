//! `probe extract`: hidden states of texts to a safetensors file, one `layer.<L>` tensor
//! `[n_inputs, hidden]` per layer (`<site>.layer.<L>` per site and layer when several sites are
//! read, all in the same forward passes), rows in input order; with `--positions all`, every
//! token into a folder of row shards (`shard-<k>.safetensors`, see
//! [`probe_core::sweep::TokenShard`]). The work is [`probe_backends::session::Session::extract`].

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;
use probe_backends::session::Task;
use probe_core::sweep::{self, LayerSelection, PromptFormat, PromptSet};
use probe_core::{Error, Readout, Result, Site, Sites, codec};

use crate::flags::{self, RunFlags};

/// Arguments of `probe extract`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ExtractArgs {
    #[command(flatten)]
    pub(crate) run: RunFlags,
    /// Inputs: JSON lines with a `text` field (used verbatim; special tokens as the
    /// tokenizer adds them by default).
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Layers: `all`, `12`, `3,5,7`, `2..6` (end excluded) or `2..=6`.
    #[arg(long)]
    pub(crate) layers: LayerSelection,
    /// Token positions: last, mean, marker:TEXT (the last token of TEXT's last occurrence;
    /// inputs are prompts, so last-prompt is last), or all (every token, to a folder of shards).
    #[arg(long)]
    pub(crate) positions: Readout,
    /// Where activations are read: resid (the residual stream between blocks, `--layers` in
    /// `output_hidden_states` numbering), or inside each block (`--layers` = blocks `0..L`):
    /// resid_mid, attn_out, mlp_out, heads (`o_proj`'s input per head) or router (MoE router
    /// logits); candle reads every site, tch and ort those of an export made with `--sites`
    /// [default: resid]. Several, comma-separated (`resid,attn_out,heads`), are read in the same
    /// forward passes, into `<site>.layer.<L>` tensors.
    #[arg(long)]
    pub(crate) site: Option<Sites>,
    /// Output safetensors file (a folder for `--positions all`).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// `--positions all`: bytes per shard file at most [default: 2 GiB].
    #[arg(long, default_value_t = sweep::DEFAULT_SHARD_BYTES)]
    pub(crate) max_shard_bytes: u64,
    /// Print the plan (batch size, dtype, placement); load nothing, write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// With --dry-run: print the resolved plan as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `probe extract`.
pub(crate) async fn run(args: ExtractArgs, quiet: bool) -> Result<()> {
    if args.json && !args.dry_run {
        return Err(Error::invalid("json", "--json prints the plan of a dry run: add --dry-run"));
    }
    let mut settings = args.run.settings()?.layers(args.layers.clone()).positions(args.positions.clone());
    settings = settings.dry_run(args.dry_run).no_generate(true);
    if let Some(sites) = &args.site {
        settings = settings.sites(sites.clone());
    }
    if settings.vllm.log_dir.is_none() {
        settings = settings.vllm_log_dir(args.out.parent().unwrap_or(std::path::Path::new(".")).join("vllm-logs"));
    }
    if settings.backend_or_default() == probe_backends::registry::Backend::Vllm {
        // vLLM extracts on its servers (given, or launched here).
        settings = settings.extract_on_servers(true);
    }
    let inputs = PromptSet::load(&args.input, PromptFormat::texts())?;
    let all = args.positions == Readout::All;
    let sites = args.site.clone().unwrap_or_else(|| Site::Resid.into());
    if all && args.out.extension().is_some_and(|e| e == "safetensors") {
        return Err(Error::invalid(
            "out",
            format!("{} (--positions all writes a folder of shards)", args.out.display()),
        ));
    }
    if !all && args.out.extension().is_none_or(|e| e != "safetensors") {
        return Err(Error::invalid("out", format!("{} (expected a .safetensors file)", args.out.display())));
    }
    let session = flags::open(&args.run.model, settings, quiet).await?;
    let prepared = session.prepare(Task::Extract, &inputs)?;
    if args.dry_run {
        return flags::print_dry_run("extract", &session, &prepared, args.json);
    }
    let launches = prepared.launches_servers();
    let layers: usize = prepared.config.reads().iter().map(|(_, l)| l.len()).sum();
    if all {
        std::fs::create_dir_all(&args.out).map_err(|e| Error::io(args.out.display(), e))?;
        let (mut tokens, mut widths) = (0, String::new());
        let out = &args.out;
        let mut sink = |info: &probe_core::ModelInfo, shard: sweep::TokenShard| -> Result<()> {
            tokens += shard.token_ids.len();
            widths = site_widths(&sites, |s| shard.token_shapes[&s].clone());
            let path = out.join(format!("shard-{:05}.safetensors", shard.index));
            let tmp = path.with_extension("partial");
            std::fs::write(&tmp, shard.to_safetensors(&meta(info, &[]))?).map_err(|e| Error::io(tmp.display(), e))?;
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(path.display(), e))
        };
        let work = session.extract_all_tokens(&inputs, args.max_shard_bytes, &mut sink);
        let shards = flags::with_signals(launches, work).await?;
        println!(
            "wrote {shards} shard(s) of {} inputs, {tokens} tokens × {layers} layers × {widths} to {}",
            inputs.len(),
            out.display()
        );
        return session.close().await;
    }
    let extracted = flags::with_signals(launches, session.extract(&inputs)).await?;
    let info = &extracted.model;
    let several = sites.as_slice().len() > 1;
    // In the order the sites were given, each by layer.
    let order = sites.as_slice().iter().flat_map(|&s| extracted.sites.range((s, 0)..=(s, usize::MAX)));
    let (names, tensors): (Vec<String>, Vec<probe_core::Tensor>) = order
        .map(|(&(site, layer), t)| {
            let name = if several { format!("{site}.layer.{layer}") } else { format!("layer.{layer}") };
            // Heads as `[n, heads, head_dim]` (the library hands every site out as rows).
            let t = match site {
                Site::Heads => probe_core::Tensor::new(vec![t.rows(), info.num_heads, info.head_dim], t.data.clone()),
                _ => t.clone(),
            };
            (name, t)
        })
        .unzip();
    let named: Vec<(&str, &probe_core::Tensor)> = names.iter().map(String::as_str).zip(&tensors).collect();
    let ids = serde_json::to_string(&inputs.prompts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>())
        .map_err(|e| Error::backend("json", e))?;
    let meta = meta(info, &[("positions", args.positions.to_string()), ("site", sites.to_string()), ("ids", ids)]);
    let bytes = codec::encode_tensors(&named, Some(meta))?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), e))?;
    }
    std::fs::write(&args.out, bytes).map_err(|e| Error::io(args.out.display(), e))?;
    let widths = site_widths(&sites, |s| match s {
        Site::Heads => vec![info.num_heads, info.head_dim],
        _ => vec![info.width(s)],
    });
    let widths = if several { widths } else { format!("{widths} ({})", sites) };
    println!(
        "wrote {} tensors ({}) of {} inputs × {widths} to {}",
        names.len(),
        names.join(", "),
        inputs.len(),
        args.out.display()
    );
    session.close().await
}

/// One token's shape at each site (`64`, `4×16`), named when there are several (`resid 64, heads
/// 4×16`).
fn site_widths(sites: &Sites, shape: impl Fn(Site) -> Vec<usize>) -> String {
    let several = sites.as_slice().len() > 1;
    let one = |s: Site| shape(s).iter().map(usize::to_string).collect::<Vec<_>>().join("×");
    let each = sites.as_slice().iter().map(|&s| if several { format!("{s} {}", one(s)) } else { one(s) });
    each.collect::<Vec<_>>().join(", ")
}

/// The files' metadata: the model's identity and dtype, and `extra`.
fn meta(info: &probe_core::ModelInfo, extra: &[(&str, String)]) -> HashMap<String, String> {
    let base = [("model", info.id.id.clone()), ("revision", info.id.revision.clone()), ("dtype", info.dtype.clone())];
    base.into_iter().chain(extra.iter().cloned()).map(|(k, v)| (k.to_owned(), v)).collect()
}
