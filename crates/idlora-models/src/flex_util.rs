//! Small helpers shared by the fused operations on burn's CPU backend ([`crate::swiglu`],
//! [`crate::attention`]) and by their tests.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};

/// Whether `t` is an `f32`, contiguous flex tensor: what the fused kernels read as a slice.
pub(crate) fn usable(t: &FlexTensor) -> bool {
    t.dtype() == DType::F32 && t.is_contiguous()
}

/// The values of a [`usable`] tensor (empty for any other).
pub(crate) fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().unwrap_or(&[])
}

/// `t` itself when it is the only owner of its buffer and starts at its beginning, else a copy:
/// either way a tensor whose storage can be written from index 0.
pub(crate) fn owned(t: FlexTensor) -> FlexTensor {
    if t.is_unique() && t.layout().start_offset() == 0 {
        t
    } else {
        let shape = t.layout().shape().clone();
        FlexTensor::from_data(TensorData::new(values(&t).to_vec(), shape))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use burn::tensor::Tensor;

    /// A tensor's values (f32).
    pub(crate) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().expect("f32 tensor")
    }

    /// Asserts `|a - b| <= abs + rel |b|` element by element, naming `what` and the index.
    pub(crate) fn close_within(a: &[f32], b: &[f32], (abs, rel): (f32, f32), what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= abs + rel * y.abs(), "{what} [{i}]: {x} vs {y}");
        }
    }
}
