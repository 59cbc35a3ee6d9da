//! How CUDA attention applies attention-probability dropout (`AttentionOpts::dropout`): the fused
//! kernels' `_drop` variants, or a composed path. A kernel that has not passed on a GPU may not be
//! a default, so the fused variants are opt-in until `gpu_ops attention_dropout_fused_matches_cpu`
//! has passed there (docs/GPU-LOG.md); the composed path is correct meanwhile.

/// The two ways CUDA attention applies dropout to the probabilities. Both use the same mask (the
/// dropout op's keep function on the counter `((b·H + h)·Tq + i)·Tk + j`), so they agree with each
/// other and with the CPU up to rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnDropoutPath {
    /// The default: ops already validated on hardware — the scores by matmul, the masks as an
    /// additive bias, `softmax_last_dim`, [`crate::Tensor::dropout`] on the `[B, H, Tq, Tk]`
    /// probabilities (dropout.cu: the same keep function), matmul with v — computed in f32. It
    /// stores the Tq×Tk matrix (and the logsumexp, when asked for, comes from the fused forward
    /// without dropout).
    Composed,
    /// The fused kernels with dropout inside (`attention_fwd_drop`, `attention_bwd_{dq,dkdv}_drop`
    /// of attention.cu; `attention_*_tc_drop_d{64,128}` of attention_tc.cu for bf16 / f16 at head
    /// dim 64 / 128 on sm_80+): no Tq×Tk matrix, the backward regenerates the mask. Emulator-tested
    /// only: opt in with `KILN_ATTN_DROPOUT=fused` or [`force_attention_dropout`].
    Fused,
}

thread_local! {
    static DROPOUT_OVERRIDE: std::cell::Cell<Option<AttnDropoutPath>> = const { std::cell::Cell::new(None) };
}

/// `KILN_ATTN_DROPOUT=fused|composed`: the process-wide choice where no thread has forced one
/// (read once; another value is reported on stderr and ignored).
fn env_path() -> Option<AttnDropoutPath> {
    static ENV: std::sync::OnceLock<Option<AttnDropoutPath>> = std::sync::OnceLock::new();
    *ENV.get_or_init(|| crate::cuda::env_choice("KILN_ATTN_DROPOUT", &[("fused", AttnDropoutPath::Fused), ("composed", AttnDropoutPath::Composed)]))
}

/// On this thread, makes later CUDA attention calls with dropout take `path` (`None`: the default,
/// `KILN_ATTN_DROPOUT` if set, else [`AttnDropoutPath::Composed`]). For the GPU tests and
/// benchmarks; thread-local like [`super::force_attention_kernel`]. A forward's backward follows
/// the path its forward took.
pub fn force_attention_dropout(path: Option<AttnDropoutPath>) {
    DROPOUT_OVERRIDE.with(|c| c.set(path));
}

/// The path CUDA attention with dropout takes on this thread (see [`force_attention_dropout`]).
pub fn attention_dropout_path() -> AttnDropoutPath {
    DROPOUT_OVERRIDE.with(|c| c.get()).or_else(env_path).unwrap_or(AttnDropoutPath::Composed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dropout_path_is_composed_unless_chosen_and_per_thread() {
        let default = env_path().unwrap_or(AttnDropoutPath::Composed);
        assert_eq!(attention_dropout_path(), default);
        for path in [AttnDropoutPath::Fused, AttnDropoutPath::Composed] {
            force_attention_dropout(Some(path));
            assert_eq!(attention_dropout_path(), path);
            // another thread keeps the default
            assert_eq!(std::thread::spawn(attention_dropout_path).join().unwrap(), default);
        }
        force_attention_dropout(None);
        assert_eq!(attention_dropout_path(), default);
    }
}
