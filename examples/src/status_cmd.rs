//! `probe status --shards N`: per shard, which blocks of a sharded sweep the cache holds, read
//! without a scheduler and without writing anything ([`probe_core::sweep::missing_blocks`]).
//! `probe sweep --shards N --submit slurm` uses the same reading to resubmit only the shards
//! with missing blocks.

use std::collections::BTreeMap;

use clap::Args;
use probe_core::sweep::{self, Shard, SweepParts};
use probe_core::{Error, Result};

use crate::progress::Bars;
use crate::sweep_cmd::SweepArgs;

/// Arguments of `probe status`: those of `probe sweep` (same model, prompts, layers, settings
/// and cache) and the shard count.
#[derive(Debug, Clone, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) sweep: SweepArgs,
    /// How many shards the sweep is split into.
    #[arg(long, value_name = "N")]
    pub(crate) shards: usize,
}

/// What the cache holds of a sweep split into `count` shards.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// Rows of every block of the batch grid.
    pub(crate) grid: Vec<(usize, usize)>,
    /// Block index → what it lacks.
    pub(crate) missing: BTreeMap<usize, Vec<String>>,
    /// The shard count.
    pub(crate) count: usize,
}

impl Progress {
    /// The shards (1-based) that own at least one missing block, in order.
    pub(crate) fn unfinished(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.missing.keys().map(|&b| Shard::owner(b, self.count).index).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// One line per shard, then a total.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for k in 1..=self.count {
            let shard = Shard { index: k, count: self.count };
            let mine: Vec<usize> = (0..self.grid.len()).filter(|&b| shard.owns(b)).collect();
            let lacking: Vec<usize> = mine.iter().copied().filter(|b| self.missing.contains_key(b)).collect();
            let done = mine.len() - lacking.len();
            if lacking.is_empty() {
                out.push(format!("shard {shard}: done ({done} of {} blocks: {})", mine.len(), or_none(&join(&mine))));
            } else {
                let what: Vec<String> = lacking
                    .iter()
                    .map(|b| {
                        let (s, e) = self.grid[*b];
                        format!("block {b} (rows {s}..{e}: {})", self.missing[b].join(", "))
                    })
                    .collect();
                out.push(format!("shard {shard}: {done} of {} blocks done; missing {}", mine.len(), what.join(", ")));
            }
        }
        let total = self.grid.len();
        let unfinished = self.unfinished();
        out.push(if unfinished.is_empty() {
            format!(
                "all {total} blocks are in the cache: probe merge (same arguments, --shards {}) writes the report",
                self.count
            )
        } else {
            let list: Vec<String> = unfinished.iter().map(|k| format!("{k}/{}", self.count)).collect();
            format!(
                "{} of {total} blocks done; shard{} with missing blocks: {}",
                total - self.missing.len(),
                if list.len() == 1 { "" } else { "s" },
                list.join(", ")
            )
        });
        out
    }
}

fn join(v: &[usize]) -> String {
    v.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

/// Reads the cache for the sweep of `args` split into `count` shards (planned as for its
/// merge: no device needed, nothing generated, extracted or written).
///
/// # Errors
/// `count` = 0, `--shard` or `--dry-run` given, every error of planning the sweep, then the
/// store's errors.
pub(crate) async fn progress(args: &SweepArgs, count: usize) -> Result<Progress> {
    if count == 0 {
        return Err(Error::invalid("shards", "0 (must be ≥ 1)"));
    }
    if let Some(s) = args.shard {
        return Err(Error::invalid(
            "shard",
            format!("{:?}: the status covers every shard (give --shards N alone)", s.to_string()),
        ));
    }
    if args.dry_run {
        return Err(Error::invalid("dry-run", "probe status starts nothing to preview: it only reads the cache"));
    }
    let plan = crate::sweep_cmd::plan_merge(args)?;
    let cache = probe_cache::from_url(&plan.cache_url)?;
    let bars = Bars::new(true);
    let model = crate::shard_cmd::identities(&plan)?;
    let mut parts = SweepParts::new(model.extractor.as_ref(), cache.as_ref()).with_observer(&bars);
    if let Some(g) = model.generator.as_deref() {
        parts = parts.with_generator(g);
    }
    let missing = sweep::missing_blocks(parts, &plan.prompts, &plan.config).await?;
    Ok(Progress { grid: sweep::blocks(plan.prompts.len(), plan.config.batch_size), missing, count })
}

/// `probe status`: prints [`Progress::lines`].
pub(crate) async fn run(args: StatusArgs) -> Result<()> {
    let p = progress(&args.sweep, args.shards).await?;
    p.lines().iter().for_each(|l| println!("{l}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_each_shards_blocks_and_the_unfinished_shards() {
        let grid = sweep::blocks(26, 4);
        let mut missing = BTreeMap::new();
        missing.insert(1, vec!["generations".to_owned(), "layers 1,3".to_owned()]);
        missing.insert(4, vec!["layer 3".to_owned()]);
        let p = Progress { grid, missing, count: 3 };
        assert_eq!(p.unfinished(), vec![2]);
        let lines = p.lines();
        assert_eq!(lines[0], "shard 1/3: done (3 of 3 blocks: 0,3,6)");
        assert_eq!(
            lines[1],
            "shard 2/3: 0 of 2 blocks done; missing block 1 (rows 4..8: generations, layers 1,3), block 4 (rows 16..20: layer 3)"
        );
        assert_eq!(lines[3], "5 of 7 blocks done; shard with missing blocks: 2/3");
        let p = Progress { missing: BTreeMap::new(), ..p };
        assert!(p.lines()[3].starts_with("all 7 blocks are in the cache"), "{:?}", p.lines());
    }
}
