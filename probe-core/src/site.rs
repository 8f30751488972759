//! Where in the model activations are read: the [`Site`] of an extraction.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where activations are read. [`Site::Resid`] is the residual stream between blocks, in Hugging
/// Face `output_hidden_states` numbering (0 = embeddings, L = after the final norm); every other
/// site is inside block `b` and numbered by block, `0..L`. Names follow TransformerLens
/// (`hook_resid_mid`, `hook_attn_out`, `hook_mlp_out`, `attn.hook_z`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// The residual stream between blocks (`hidden_states[l]`): `[n, hidden]`.
    #[default]
    Resid,
    /// The residual stream inside block `b`, after the attention sub-block's addition: `[n, hidden]`.
    /// Blocks whose attention and MLP read the same input (GPT-NeoX's parallel residual) have none.
    ResidMid,
    /// What block `b`'s attention adds to the residual stream (after the post-attention norm of
    /// Gemma 2/3 and OLMo 2): `[n, hidden]`.
    AttnOut,
    /// What block `b`'s MLP adds to the residual stream (after the post-feedforward norm where
    /// there is one; for a mixture of experts, the weighted sum of the experts): `[n, hidden]`.
    MlpOut,
    /// The input of block `b`'s output projection, per head (TransformerLens `hook_z`):
    /// `[n, heads, head_dim]`.
    Heads,
    /// The router logits of block `b`'s mixture of experts: `[n, experts]`.
    Router,
}

impl Site {
    /// Every site, in the order of [`Site::as_str`]'s documentation.
    pub const ALL: [Site; 6] = [Site::Resid, Site::ResidMid, Site::AttnOut, Site::MlpOut, Site::Heads, Site::Router];

    /// The name used on the command line, in `probe.toml`, cache keys and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Site::Resid => "resid",
            Site::ResidMid => "resid_mid",
            Site::AttnOut => "attn_out",
            Site::MlpOut => "mlp_out",
            Site::Heads => "heads",
            Site::Router => "router",
        }
    }

    /// True for [`Site::Resid`] (serde's `skip_serializing_if`: keys and files of the residual
    /// stream keep the form they had before sites existed).
    pub fn is_resid(&self) -> bool {
        *self == Site::Resid
    }

    /// Whether layers of this site are block indices (`0..L`) rather than `hidden_states`
    /// indices (`0..=L`).
    pub fn in_block(self) -> bool {
        self != Site::Resid
    }

    /// The blocks a forward pass runs to read `layer` at this site: hidden state `d` is block
    /// `d - 1`'s output (`d` blocks), a site inside block `b` needs `b + 1`.
    pub fn blocks_to(self, layer: usize) -> usize {
        if self.in_block() { layer + 1 } else { layer }
    }

    /// The blocks a forward pass runs to read every (site, layers) of `reads`: the deepest.
    pub fn blocks_for(reads: &[(Site, Vec<usize>)]) -> usize {
        reads.iter().flat_map(|(site, layers)| layers.iter().map(|&l| site.blocks_to(l))).max().unwrap_or(0)
    }
}

impl std::str::FromStr for Site {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Site::ALL.into_iter().find(|site| site.as_str() == s).ok_or_else(|| {
            Error::invalid("site", format!("{s:?} (expected resid, resid_mid, attn_out, mlp_out, heads or router)"))
        })
    }
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Site {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

/// One site or several, read in the same forward pass (`resid,attn_out,heads` on the command
/// line and in `probe.toml`): at least one, none twice, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sites(Vec<Site>);

impl Sites {
    /// `sites`, checked.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no site, or a site given twice (naming it).
    pub fn new(sites: Vec<Site>) -> Result<Self> {
        if sites.is_empty() {
            return Err(Error::invalid("site", "no site given"));
        }
        if let Some((i, twice)) = sites.iter().enumerate().find(|(i, s)| sites[..*i].contains(s)) {
            let list = Sites(sites.clone()).to_string();
            return Err(Error::invalid("site", format!("{twice} is given twice in {list:?} (at {i})")));
        }
        Ok(Self(sites))
    }
    /// The sites, in the order given.
    pub fn as_slice(&self) -> &[Site] {
        &self.0
    }
}

impl From<Site> for Sites {
    fn from(site: Site) -> Self {
        Self(vec![site])
    }
}

impl std::str::FromStr for Sites {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Sites::new(s.split(',').map(|p| p.trim().parse()).collect::<Result<_>>()?)
    }
}

impl std::fmt::Display for Sites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for site in Site::ALL {
            assert_eq!(site.as_str().parse::<Site>().unwrap(), site);
            assert_eq!(serde_json::to_string(&site).unwrap(), format!("\"{site}\""));
        }
        let err = "attn".parse::<Site>().unwrap_err().to_string();
        assert!(err.contains("\"attn\"") && err.contains("attn_out"), "{err}");
        assert!(Site::default().is_resid() && !Site::Resid.in_block() && Site::Heads.in_block());
    }

    #[test]
    fn site_lists_parse_and_refuse_repeats() {
        let sites: Sites = "resid, attn_out,heads".parse().unwrap();
        assert_eq!(sites.as_slice(), [Site::Resid, Site::AttnOut, Site::Heads]);
        assert_eq!(sites.to_string(), "resid,attn_out,heads");
        let e = "attn_out,resid,attn_out".parse::<Sites>().unwrap_err().to_string();
        assert!(e.contains("attn_out is given twice"), "{e}");
        let e = "resid,attn".parse::<Sites>().unwrap_err().to_string();
        assert!(e.contains("\"attn\""), "{e}");
    }
}
