//! GEMM through matrixmultiply (see ops/matmul.rs).
