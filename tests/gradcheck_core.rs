//! Gradchecks (f64 central differences) for the core ops: broadcasting arithmetic, reductions, views.
use kiln::tensor::testing::{gradcheck, rand_var};
use kiln::Tensor;

#[test]
fn binary_ops_broadcast() {
    let a = rand_var(1, &[3, 1, 5]);
    let b = rand_var(2, &[4, 1]);
    gradcheck("add", &[a.clone(), b.clone()], |x| x[0].add(&x[1])).unwrap();
    gradcheck("sub", &[a.clone(), b.clone()], |x| x[0].sub(&x[1])).unwrap();
    gradcheck("mul", &[a.clone(), b.clone()], |x| x[0].mul(&x[1])).unwrap();
    let c = Tensor::rand_uniform(3, &[4, 1], 0.5, 2.0, kiln::DType::F64, kiln::Device::Cpu).unwrap().var();
    gradcheck("div", &[a.clone(), c], |x| x[0].div(&x[1])).unwrap();
    gradcheck("affine", &[a], |x| x[0].affine(-1.5, 0.25)).unwrap();
}

#[test]
fn reductions() {
    let a = rand_var(4, &[3, 4, 5]);
    gradcheck("sum_dims", &[a.clone()], |x| x[0].sum_dims(&[0, 2], false)).unwrap();
    gradcheck("sum keepdim", &[a.clone()], |x| x[0].sum(-1, true)).unwrap();
    gradcheck("mean", &[a.clone()], |x| x[0].mean(1, false)).unwrap();
    gradcheck("mean_all", &[a], |x| x[0].mean_all()).unwrap();
}

#[test]
fn views_and_noncontiguous_inputs() {
    let a = rand_var(5, &[3, 4, 5]);
    gradcheck("permute", &[a.clone()], |x| x[0].permute(&[2, 0, 1])?.mul(&x[0].permute(&[2, 0, 1])?)).unwrap();
    gradcheck("transpose+reshape", &[a.clone()], |x| x[0].transpose(0, 2)?.reshape(&[5, 12])).unwrap();
    gradcheck("narrow", &[a.clone()], |x| x[0].narrow(1, 1, 2)).unwrap();
    gradcheck("broadcast", &[rand_var(6, &[4, 1])], |x| x[0].broadcast_as(&[2, 4, 3])).unwrap();
    gradcheck("unsqueeze/squeeze", &[a.clone()], |x| x[0].unsqueeze(1)?.squeeze(1)?.mul(&x[0])).unwrap();
    gradcheck("cat", &[a.clone(), rand_var(7, &[3, 2, 5])], |x| Tensor::cat(&[x[0].clone(), x[1].clone()], 1)).unwrap();
    gradcheck("stack", &[a.clone(), rand_var(8, &[3, 4, 5])], |x| Tensor::stack(&[x[0].clone(), x[1].transpose(0, 0)?], 0)).unwrap();
    gradcheck("split", &[a], |x| {
        let p = x[0].split(&[1, 3], 1)?;
        p[1].narrow(1, 0, 1)?.mul(&p[0])
    })
    .unwrap();
}

#[test]
fn narrow_gradients_add_into_one_input() {
    // q, k, v narrowed out of one projection and split into heads (views of the narrows), as the
    // attention layer does: the three gradients are added into their windows of one sum in place
    let a = rand_var(10, &[2, 3, 12]);
    let p = a.split(&[4, 4, 4], 2).unwrap();
    let h = p[1].reshape(&[2, 3, 2, 2]).unwrap();
    assert_eq!(h.strides(), &[36, 12, 2, 1], "splitting the last dim of a narrow is a view");
    gradcheck("qkv split into heads", &[a.clone()], |x| {
        let p = x[0].split(&[4, 4, 4], 2)?;
        let heads = |t: &Tensor| t.reshape(&[2, 3, 2, 2])?.permute(&[0, 2, 1, 3]);
        let y = heads(&p[0])?.mul(&heads(&p[1])?)?.add(&heads(&p[2])?)?;
        y.permute(&[0, 2, 1, 3])?.reshape(&[2, 3, 4])
    })
    .unwrap();
    // overlapping windows along every dim, and a tensor whose first gradient is the very tensor an
    // add also hands to its other input (the leaf x, read last: it must not be written in place)
    // (both operand orders, so that either the add or the narrows reach `t` first)
    for (dim, flip) in [(0, false), (1, false), (2, false), (0, true), (2, true)] {
        let n = a.shape()[dim];
        gradcheck("overlapping narrows + full use", &[a.clone()], |x| {
            let t = x[0].affine(2.0, 0.0)?;
            let u = &x[0];
            let s = if flip { u.add(&t)? } else { t.add(u)? };
            let (w1, w2) = (t.narrow(dim, 0, n - 1)?, t.narrow(dim, 1, n - 1)?);
            let (l, r) = (s.narrow(dim, 0, n - 1)?.mul(&w1)?, w2.mul(&w2)?);
            if flip {
                r.add(&l)
            } else {
                l.add(&r)
            }
        })
        .unwrap();
    }
}

#[test]
fn autograd_semantics() {
    let a = rand_var(9, &[2, 3]);
    // gradients accumulate across backward calls on fresh graphs
    a.mul(&a).unwrap().sum_all().unwrap().backward().unwrap();
    a.mul(&a).unwrap().sum_all().unwrap().backward().unwrap();
    let g = a.grad().unwrap().to_vec::<f64>().unwrap();
    let x = a.to_vec::<f64>().unwrap();
    for (g, x) in g.iter().zip(&x) {
        assert!((g - 4.0 * x).abs() < 1e-12);
    }
    a.zero_grad();
    assert!(a.grad().is_none());
    // the graph is freed after backward: a second backward through it is an error
    let loss = a.mul(&a).unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    assert!(loss.backward().is_err());
    // no_grad records nothing; detach cuts the graph
    let y = kiln::tensor::no_grad(|| a.mul(&a).unwrap());
    assert!(!y.requires_grad());
    assert!(!a.detach().requires_grad());
    // non-scalar backward is an error, not a panic
    assert!(a.mul(&a).unwrap().backward().is_err());
}

#[test]
fn shape_errors_name_the_op() {
    let a = Tensor::zeros(&[2, 3], kiln::DType::F32, kiln::Device::Cpu).unwrap();
    let b = Tensor::zeros(&[4], kiln::DType::F32, kiln::Device::Cpu).unwrap();
    let e = a.add(&b).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("[2, 3]") && e.contains("[4]"), "{e}");
    let c = Tensor::zeros(&[2, 3], kiln::DType::F64, kiln::Device::Cpu).unwrap();
    assert!(a.mul(&c).unwrap_err().to_string().contains("dtype"));
    assert!(a.reshape(&[4, 2]).is_err());
    assert!(a.narrow(1, 2, 2).is_err());
    assert!(Tensor::zeros(&[2], kiln::DType::F32, kiln::Device::Cuda(0)).unwrap_err().to_string().contains("CUDA"));
}
