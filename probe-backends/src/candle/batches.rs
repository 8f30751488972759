//! How inputs go into forward passes: batches of at most `size` inputs, each with the prefix
//! of token ids its rows share ([`super::model::Prefix`]: run once, then every row runs only
//! what follows it).
//!
//! Inputs are sorted by their ids (lexicographically), so that inputs that start alike sit
//! side by side; a run of neighbours that share at least [`PASS_POSITIONS`] ids is a group
//! (one template), the others go together. Each group is sorted by length (longest first,
//! the least padding) and cut into batches, and each batch shares its rows' longest common
//! prefix (all but its shortest row's last position at most: every row runs one position of
//! its own) where that costs less than running them whole, counted in positions run (padding
//! included, each pass [`PASS_POSITIONS`] more: every weight is read once per pass).
//!
//! A set whose inputs share nothing is one group: batches by length, as before sharing.

/// What one forward pass costs beyond its positions, counted in positions; also the fewest
/// ids a group of inputs shares.
pub(crate) const PASS_POSITIONS: usize = 16;

/// One forward pass: `rows` (indices of the inputs) sharing their first `prefix` ids
/// (0: nothing shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) rows: Vec<usize>,
    pub(crate) prefix: usize,
}

/// The batches of `ids` (see the module docs); `share` false: by length, nothing shared.
pub(crate) fn plan(ids: &[Vec<u32>], size: usize, share: bool) -> Vec<Batch> {
    let size = size.max(1);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut alone: Vec<usize> = Vec::new();
    if share && size > 1 {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by(|&a, &b| ids[a].cmp(&ids[b]).then(a.cmp(&b)));
        let mut run: Vec<usize> = Vec::new();
        for &i in &order {
            if run.last().is_some_and(|&j| common(&ids[i], &ids[j]) < PASS_POSITIONS) {
                let done = std::mem::take(&mut run);
                if done.len() > 1 { groups.push(done) } else { alone.extend(done) }
            }
            run.push(i);
        }
        if run.len() > 1 { groups.push(run) } else { alone.extend(run) }
    } else {
        alone = (0..ids.len()).collect();
    }
    groups.push(alone);
    let mut batches = Vec::new();
    for mut group in groups {
        group.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        for rows in group.chunks(size) {
            let prefix =
                if share { shared_prefix(&rows.iter().map(|&i| ids[i].as_slice()).collect::<Vec<_>>()) } else { 0 };
            batches.push(Batch { rows: rows.to_vec(), prefix });
        }
    }
    batches
}

/// How many ids `a` and `b` start with in common.
fn common(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The cost of `n` rows, the longest `longest` positions and the shortest `shortest`, whose
/// ids have `common` in common, and the prefix they share (0: none, when running them whole
/// costs no more).
fn batch_cost(n: usize, longest: usize, common: usize, shortest: usize) -> (usize, usize) {
    let whole = n * longest + PASS_POSITIONS;
    let prefix = common.min(shortest.saturating_sub(1));
    let shared = n * (longest - prefix) + prefix + 2 * PASS_POSITIONS;
    if prefix > 0 && shared < whole { (shared, prefix) } else { (whole, 0) }
}

/// The prefix that `ids` (rows of a prefill) share, when running it once costs less than
/// running them whole (see [`plan`]); else 0.
pub(crate) fn shared_prefix(ids: &[&[u32]]) -> usize {
    let Some(first) = ids.first() else { return 0 };
    let common = ids.iter().map(|r| common(r, first)).min().unwrap_or(0);
    let longest = ids.iter().map(|r| r.len()).max().unwrap_or(0);
    let shortest = ids.iter().map(|r| r.len()).min().unwrap_or(0);
    batch_cost(ids.len(), longest, common, shortest).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templated(n: usize, prefix: usize) -> Vec<Vec<u32>> {
        (0..n)
            .map(|i| {
                let mut ids: Vec<u32> = (0..prefix as u32).collect();
                // Items of 3 to 5 ids, each unlike the others.
                ids.extend((0..3 + i % 3).map(|j| 1000 + (i * 7 + j) as u32));
                ids
            })
            .collect()
    }

    #[test]
    fn templated_inputs_share_their_instruction() {
        let ids = templated(10, 40);
        let plan = plan(&ids, 4, true);
        assert_eq!(plan.iter().map(|b| b.rows.len()).sum::<usize>(), 10);
        assert_eq!(plan.len(), 3);
        assert!(plan.iter().all(|b| b.prefix == 40), "{plan:?}");
        let mut rows: Vec<usize> = plan.iter().flat_map(|b| b.rows.clone()).collect();
        rows.sort_unstable();
        assert_eq!(rows, (0..10).collect::<Vec<_>>());
        // Without sharing, or one input per batch: by length, nothing shared.
        for plan in [super::plan(&ids, 4, false), super::plan(&ids, 1, true)] {
            assert!(plan.iter().all(|b| b.prefix == 0));
            let lens: Vec<usize> = plan.iter().flat_map(|b| b.rows.iter().map(|&i| ids[i].len())).collect();
            assert!(lens.windows(2).all(|w| w[0] >= w[1]), "{lens:?}");
        }
    }

    #[test]
    fn unrelated_inputs_keep_the_plan_by_length() {
        let ids: Vec<Vec<u32>> = (0..9u32).map(|i| (0..(3 + i * 5)).map(|j| i * 100 + j).collect()).collect();
        assert_eq!(plan(&ids, 4, true), plan(&ids, 4, false));
        // Alike for fewer ids than a pass costs: one group.
        let ids: Vec<Vec<u32>> = (0..9u32).map(|i| [&[7, 7, 7][..], &ids[i as usize]].concat()).collect();
        assert_eq!(plan(&ids, 4, true), plan(&ids, 4, false));
    }

    #[test]
    fn two_templates_go_in_batches_of_their_own() {
        let mut ids = templated(5, 40);
        let other: Vec<Vec<u32>> = templated(3, 30).into_iter().map(|r| r.iter().map(|x| x + 5000).collect()).collect();
        ids.extend(other);
        let plan = plan(&ids, 16, true);
        let mut groups: Vec<(Vec<usize>, usize)> = plan.into_iter().map(|b| (b.rows, b.prefix)).collect();
        groups.iter_mut().for_each(|g| g.0.sort_unstable());
        groups.sort();
        assert_eq!(groups, [(vec![0, 1, 2, 3, 4], 40), (vec![5, 6, 7], 30)]);
    }

    #[test]
    fn a_prefix_leaves_every_row_a_position_of_its_own() {
        // One input is a prefix of the others: the shared part stops one short of it.
        let mut ids = templated(4, 60);
        ids.push((0..60).collect());
        let plan = plan(&ids, 8, true);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].prefix, 59);
    }

    #[test]
    fn a_short_common_prefix_is_not_worth_its_pass() {
        // Two ids in common save 2 positions per row, less than the prefix's pass costs.
        assert_eq!(shared_prefix(&[&[1, 2, 3, 4], &[1, 2, 5], &[1, 2, 6, 7, 8]]), 0);
        assert_eq!(shared_prefix(&[&[1; 40], &[1; 41], &[1; 60]]), 39);
        let ids = templated(4, 2);
        assert!(plan(&ids, 4, true).iter().all(|b| b.prefix == 0));
    }
}
