//! index_select, embedding, gather, scatter_add: values against hand-written loops, f64 gradchecks
//! with repeated ids and non-contiguous inputs, the parallel deterministic backward, and errors.
use kiln::tensor::testing::{assert_close, gradcheck, rand_var};
use kiln::{DType, Device, Tensor};

fn ids(v: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape).unwrap()
}

#[test]
fn index_select_values_every_dim() {
    let x = Tensor::arange(0.0, 24.0, 1.0, DType::F32, Device::Cpu).unwrap().reshape(&[2, 3, 4]).unwrap();
    let i = ids(&[2, 0, 2], &[3]);
    let y = x.index_select(1, &i).unwrap();
    assert_eq!(y.shape(), &[2, 3, 4]);
    let v = y.to_vec::<f32>().unwrap();
    assert_eq!(&v[..12], &[8., 9., 10., 11., 0., 1., 2., 3., 8., 9., 10., 11.]);
    assert_eq!(&v[12..16], &[20., 21., 22., 23.]);
    let y = x.index_select(-1, &ids(&[3, 1], &[2])).unwrap();
    assert_eq!(y.shape(), &[2, 3, 2]);
    assert_eq!(&y.to_vec::<f32>().unwrap()[..4], &[3., 1., 7., 5.]);
    let y = x.index_select(0, &ids(&[1], &[1])).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), (12..24).map(|v| v as f32).collect::<Vec<_>>());
    // non-contiguous input, i64 data, empty id list
    let xt = x.transpose(0, 2).unwrap(); // [4, 3, 2]
    let y = xt.index_select(0, &ids(&[3], &[1])).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![3., 15., 7., 19., 11., 23.]);
    let xi = Tensor::from_slice(&[5i64, 6, 7], &[3]).unwrap();
    assert_eq!(xi.index_select(0, &ids(&[2, 2, 0], &[3])).unwrap().to_vec::<i64>().unwrap(), vec![7, 7, 5]);
    assert_eq!(x.index_select(1, &ids(&[], &[0])).unwrap().shape(), &[2, 0, 4]);
}

#[test]
fn gradcheck_index_select_repeated_ids() {
    let rep = ids(&[1, 0, 1, 1, 3], &[5]);
    gradcheck("index_select dim 0", &[rand_var(1, &[4, 3])], |x| x[0].index_select(0, &rep)).unwrap();
    gradcheck("index_select dim 1", &[rand_var(2, &[2, 4, 3])], |x| x[0].index_select(1, &rep)).unwrap();
    gradcheck("index_select last", &[rand_var(3, &[3, 4])], |x| x[0].index_select(-1, &rep)).unwrap();
    gradcheck("index_select transposed", &[rand_var(4, &[3, 4])], |x| x[0].t()?.index_select(0, &rep)).unwrap();
}

#[test]
fn embedding_values_and_gradcheck() {
    let w = Tensor::arange(0.0, 12.0, 1.0, DType::F32, Device::Cpu).unwrap().reshape(&[4, 3]).unwrap();
    let e = Tensor::embedding(&ids(&[3, 0, 3, 1], &[2, 2]), &w).unwrap();
    assert_eq!(e.shape(), &[2, 2, 3]);
    assert_eq!(e.to_vec::<f32>().unwrap(), vec![9., 10., 11., 0., 1., 2., 9., 10., 11., 3., 4., 5.]);
    // a 0-d id gives one row
    assert_eq!(Tensor::embedding(&Tensor::scalar(2i64), &w).unwrap().to_vec::<f32>().unwrap(), vec![6., 7., 8.]);
    // half types are copied exactly
    let wb = w.to_dtype(DType::BF16).unwrap();
    let eb = Tensor::embedding(&ids(&[1, 2], &[2]), &wb).unwrap();
    assert_eq!(eb.dtype(), DType::BF16);
    assert_eq!(eb.to_vec_f64().unwrap(), vec![3., 4., 5., 6., 7., 8.]);
    let t = ids(&[2, 2, 0, 4, 2, 1], &[2, 3]);
    gradcheck("embedding", &[rand_var(5, &[5, 3])], |x| Tensor::embedding(&t, &x[0])).unwrap();
}

#[test]
fn embedding_backward_large_is_a_deterministic_scatter_add() {
    // Big enough for the parallel backward; ids repeat heavily.
    let (v, d, n) = (300usize, 128usize, 1000usize);
    let idv: Vec<i64> = (0..n).map(|i| ((i * 7919) % 97) as i64 * 3 % v as i64).collect();
    let w = Tensor::randn(1, &[v, d], 0.0, 1.0, DType::F32, Device::Cpu).unwrap().var();
    let g = Tensor::randn(2, &[n, d], 0.0, 1.0, DType::F32, Device::Cpu).unwrap();
    Tensor::embedding(&ids(&idv, &[n]), &w).unwrap().backward_with(g.clone()).unwrap();
    let got = w.grad().unwrap();
    // reference: sequential accumulation in id-position order (the documented order), so f32 bits match
    let gv = g.to_vec::<f32>().unwrap();
    let mut want = vec![0f32; v * d];
    for (j, &r) in idv.iter().enumerate() {
        for c in 0..d {
            want[r as usize * d + c] += gv[j * d + c];
        }
    }
    assert_eq!(got.to_vec::<f32>().unwrap(), want);
    // and again: identical bits
    w.zero_grad();
    Tensor::embedding(&ids(&idv, &[n]), &w).unwrap().backward_with(g).unwrap();
    assert_eq!(w.grad().unwrap().to_vec::<f32>().unwrap(), want);
}

#[test]
fn gather_values_and_gradcheck() {
    // picking logits: x [N, V], index [N, 1]
    let x = Tensor::arange(0.0, 12.0, 1.0, DType::F64, Device::Cpu).unwrap().reshape(&[3, 4]).unwrap();
    let pick = x.gather(1, &ids(&[2, 0, 3], &[3, 1])).unwrap();
    assert_eq!(pick.shape(), &[3, 1]);
    assert_eq!(pick.to_vec::<f64>().unwrap(), vec![2., 4., 11.]);
    let g0 = x.gather(0, &ids(&[2, 0, 1, 1, 0, 0], &[2, 3])).unwrap();
    assert_eq!(g0.to_vec::<f64>().unwrap(), vec![8., 1., 6., 4., 1., 2.]);
    let xt = x.t().unwrap(); // [4, 3], non-contiguous
    assert_eq!(xt.gather(1, &ids(&[2, 1], &[2, 1])).unwrap().to_vec::<f64>().unwrap(), vec![8., 5.]);

    let idx = ids(&[1, 1, 0, 3, 3, 3], &[3, 2]);
    gradcheck("gather dim 1", &[rand_var(1, &[3, 4])], |x| x[0].gather(1, &idx)).unwrap();
    let idx0 = ids(&[2, 0, 2, 2, 1, 0], &[2, 3]);
    gradcheck("gather dim 0", &[rand_var(2, &[3, 4])], |x| x[0].gather(0, &idx0)).unwrap();
    let idx3 = ids(&[0, 2, 2, 1, 1, 1, 0, 0], &[2, 2, 2]);
    gradcheck("gather 3-D transposed", &[rand_var(3, &[3, 3, 2])], |x| x[0].transpose(0, 2)?.gather(1, &idx3)).unwrap();
}

#[test]
fn scatter_add_values_and_gradcheck() {
    let base = Tensor::zeros(&[2, 4], DType::F64, Device::Cpu).unwrap();
    let src = Tensor::from_slice(&[1.0f64, 2., 3., 4., 5., 6.], &[2, 3]).unwrap();
    let idx = ids(&[0, 3, 0, 2, 2, 1], &[2, 3]);
    let y = base.scatter_add(1, &idx, &src).unwrap();
    assert_eq!(y.to_vec::<f64>().unwrap(), vec![4., 0., 0., 2., 0., 6., 9., 0.]);
    let yi = Tensor::zeros(&[3], DType::I64, Device::Cpu).unwrap().scatter_add(0, &ids(&[2, 2, 0], &[3]), &ids(&[1, 1, 1], &[3])).unwrap();
    assert_eq!(yi.to_vec::<i64>().unwrap(), vec![1, 0, 2]);
    gradcheck("scatter_add", &[rand_var(4, &[2, 4]), rand_var(5, &[2, 3])], |x| x[0].scatter_add(1, &idx, &x[1])).unwrap();
}

#[test]
fn bad_ids_are_errors_naming_the_op() {
    let x = Tensor::zeros(&[4, 3], DType::F32, Device::Cpu).unwrap();
    let e = x.index_select(0, &ids(&[0, 4], &[2])).unwrap_err().to_string();
    assert!(e.contains("index_select") && e.contains('4'), "{e}");
    let e = x.index_select(1, &ids(&[-1], &[1])).unwrap_err().to_string();
    assert!(e.contains("index_select") && e.contains("-1"), "{e}");
    let e = Tensor::embedding(&ids(&[1, 9], &[2]), &x).unwrap_err().to_string();
    assert!(e.contains("embedding") && e.contains('9'), "{e}");
    let e = Tensor::embedding(&ids(&[-3], &[1]), &x).unwrap_err().to_string();
    assert!(e.contains("embedding") && e.contains("-3"), "{e}");
    let e = x.gather(1, &ids(&[3], &[1, 1])).unwrap_err().to_string();
    assert!(e.contains("gather") && e.contains('3'), "{e}");
    let e = x.scatter_add(0, &ids(&[7], &[1, 1]), &Tensor::zeros(&[1, 1], DType::F32, Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(e.contains("scatter_add"), "{e}");
    // wrong id dtype / rank / shape
    let fids = Tensor::from_slice(&[0.0f32, 1.0], &[2]).unwrap();
    let e = x.index_select(0, &fids).unwrap_err().to_string();
    assert!(e.contains("index_select") && e.contains("i64"), "{e}");
    assert!(Tensor::embedding(&fids, &x).unwrap_err().to_string().contains("i64"));
    assert!(x.index_select(0, &ids(&[0, 1], &[1, 2])).unwrap_err().to_string().contains("1-D"));
    assert!(x.index_select(2, &ids(&[0], &[1])).is_err());
    assert!(x.gather(1, &ids(&[0], &[1])).unwrap_err().to_string().contains("gather"));
    assert!(x.gather(1, &ids(&[0; 5], &[5, 1])).unwrap_err().to_string().contains("gather"));
    let e = Tensor::embedding(&ids(&[0], &[1]), &Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(e.contains("embedding"), "{e}");
}

#[test]
fn index_select_backward_accumulates_on_shared_leaf() {
    // the same leaf selected twice in one graph: gradients from both uses add up
    let w = rand_var(9, &[5, 2]);
    gradcheck("two lookups", &[w], |x| {
        let a = Tensor::embedding(&ids(&[1, 1, 4], &[3]), &x[0])?;
        let b = x[0].index_select(0, &ids(&[4, 0, 1], &[3]))?;
        a.mul(&b)
    })
    .unwrap();
    let grad_check = rand_var(10, &[3, 2]);
    let sel = grad_check.index_select(0, &ids(&[2, 2], &[2])).unwrap().sum_all().unwrap();
    sel.backward().unwrap();
    assert_close("twice-selected row", &grad_check.grad().unwrap(), &Tensor::from_slice(&[0.0f64, 0., 0., 0., 2., 2.], &[3, 2]).unwrap(), 0.0);
}

/// `assign_narrow` writes only its window, in place; views taken before keep the old data; the
/// other dims must match and the window must fit.
#[test]
fn assign_narrow_writes_the_window_only() {
    let base: Vec<f32> = (0..2 * 3 * 8 * 4).map(|i| i as f32).collect();
    for dt in [DType::F32, DType::BF16, DType::F64, DType::I64] {
        let t = Tensor::from_vec(base.clone(), &[2, 3, 8, 4]).unwrap().to_dtype(dt).unwrap();
        let before = t.narrow(2, 0, 8).unwrap(); // a view taken earlier
        let src = Tensor::from_vec((0..2 * 3 * 2 * 4).map(|i| -1.0 - i as f32).collect::<Vec<_>>(), &[2, 3, 2, 4]).unwrap().to_dtype(dt).unwrap();
        // a permuted source: the window gets src's logical elements
        let src_t = src.permute(&[0, 1, 3, 2]).unwrap().contiguous().unwrap().permute(&[0, 1, 3, 2]).unwrap();
        t.assign_narrow(2, 5, &src_t).unwrap();
        let got = t.to_vec_f64().unwrap();
        let want_src = src.to_vec_f64().unwrap();
        for (i, &g) in got.iter().enumerate() {
            let (b, h, p, c) = (i / 96, i / 32 % 3, i / 4 % 8, i % 4);
            let want = if (5..7).contains(&p) { want_src[((b * 3 + h) * 2 + p - 5) * 4 + c] } else { base[i] as f64 };
            assert_eq!(g, want, "{dt}: element {i}");
        }
        assert_eq!(before.to_vec_f64().unwrap(), base.iter().map(|&x| x as f64).collect::<Vec<_>>(), "{dt}: an earlier view changed");
    }
    let t = Tensor::zeros(&[2, 3, 8, 4], DType::F32, Device::Cpu).unwrap();
    let ok = Tensor::ones(&[2, 3, 2, 4], DType::F32, Device::Cpu).unwrap();
    for (e, want) in [
        (t.assign_narrow(2, 7, &ok).unwrap_err(), "out of bounds"),
        (t.assign_narrow(2, 0, &Tensor::ones(&[2, 2, 2, 4], DType::F32, Device::Cpu).unwrap()).unwrap_err(), "assign_narrow"),
        (t.assign_narrow(2, 0, &Tensor::ones(&[2, 3, 2], DType::F32, Device::Cpu).unwrap()).unwrap_err(), "assign_narrow"),
        (t.assign_narrow(2, 0, &ok.to_dtype(DType::F64).unwrap()).unwrap_err(), "assign_narrow"),
        (t.assign_narrow(4, 0, &ok).unwrap_err(), "assign_narrow"),
    ] {
        assert!(e.to_string().contains(want), "{e}");
    }
    assert_eq!(t.sum_all().unwrap().to_scalar().unwrap(), 0.0, "a failed call wrote something");
}
