//! Attention-probability dropout on CUDA against the CPU's fused op with the same seed (the mask
//! depends only on the seed and the counter of each probability): values and gradients of q, k, v
//! in f32 / bf16 / f16, odd sizes, causal, key padding (a fully padded batch row), Tq != Tk. Both
//! CUDA paths: the fused `_drop` kernels (opt-in, `KILN_ATTN_DROPOUT=fused`; attention.cu for f32
//! and head dims other than 64 / 128, attention_tc.cu for bf16 / f16 at 64 / 128) and the default
//! composed path. Part of the `gpu_ops` binary (included from tests/gpu_ops.rs).
use super::*;
use kiln::tensor::ops::attention::{attention_dropout_path, force_attention_dropout, AttnDropoutPath};
use kiln::tensor::ops::attention::AttnDropout;

/// Attention with dropout `p` on `[b, h, t, d]` (t queries, t + 3 keys when not causal): plain,
/// causal, and with the last `pad` keys of every batch row after the first masked out (row 1
/// entirely when `pad` is the key count).
fn check_attention_dropout(name: &str, dev: Device, (b, h, t, d): (usize, usize, usize, usize), pad: usize, p: f64) {
    let dropout = Some(AttnDropout { p, seed: 0x5EED + d as u64 });
    let (q, kv) = ([b, h, t, d], [b, h, t + 3, d]);
    check(&format!("{name} d={d} p={p}"), dev, &[&q, &kv, &kv], false, true, |x| {
        x[0].attention(&x[1], &x[2], &AttentionOpts { dropout, ..Default::default() })
    });
    let sq = [b, h, t, d];
    check(&format!("{name} causal d={d} p={p}"), dev, &[&sq, &sq, &sq], false, true, |x| {
        x[0].attention(&x[1], &x[2], &AttentionOpts { causal: true, dropout, ..Default::default() })
    });
    let mask: Vec<i64> = (0..b * t).map(|i| if i >= t && (i % t >= t - pad || i / t == 1) { 0 } else { 1 }).collect();
    let mask = Tensor::from_vec(mask, &[b, t]).unwrap();
    check(&format!("{name} causal + key padding d={d} p={p}"), dev, &[&sq, &sq, &sq], false, true, |x| {
        let m = mask.to_device(x[0].device())?;
        x[0].attention(&x[1], &x[2], &AttentionOpts { causal: true, key_padding_mask: Some(m), dropout, ..Default::default() })
    });
}

fn both_paths_against_cpu(dev: Device, path: AttnDropoutPath) {
    force_attention_dropout(Some(path));
    assert_eq!(attention_dropout_path(), path);
    let name = format!("attention dropout ({path:?})");
    // d 32 / 80 run attention.cu's kernels in every dtype, 64 / 128 attention_tc.cu's for bf16 / f16
    for d in [32usize, 64, 80, 128] {
        check_attention_dropout(&name, dev, (3, 2, 97, d), 20, 0.1);
    }
    check_attention_dropout(&name, dev, (2, 3, 37, 64), 9, 0.5);
    // the tensor-core blocks: several 64-row query blocks and 64-key tiles, partial last ones
    check_attention_dropout(&name, dev, (3, 1, 200, 128), 45, 0.2);
    force_attention_dropout(None);
}

gpu_test!(attention_dropout_fused_matches_cpu, |dev| {
    both_paths_against_cpu(dev, AttnDropoutPath::Fused);
    // the simple kernels' dropout variants for 16-bit inputs too
    kiln::tensor::ops::attention::force_attention_kernel(Some(kiln::tensor::ops::attention::AttnKernel::Simple));
    force_attention_dropout(Some(AttnDropoutPath::Fused));
    check_attention_dropout("attention dropout (Fused, simple kernels)", dev, (2, 2, 53, 64), 7, 0.3);
    force_attention_dropout(None);
    kiln::tensor::ops::attention::force_attention_kernel(None);
});

gpu_test!(attention_dropout_composed_matches_cpu, |dev| {
    both_paths_against_cpu(dev, AttnDropoutPath::Composed);
});
