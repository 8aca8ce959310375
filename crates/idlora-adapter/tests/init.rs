//! When an adapter's random initialisation is drawn. Its own test binary: it reseeds the CPU
//! device's generator, which every test of a binary shares across its threads.
#![allow(clippy::unwrap_used)]

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use idlora_adapter::{AdaptedLinear, IndexSets, MethodConfig, MethodKind};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// Every float of a module, in visiting order.
struct Values(Vec<f32>);
impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.extend(values(param.val()));
    }
}

/// An adapter's random initialisation is drawn when it is built, by the generator of the device it
/// is built on. burn's lazily initialised parameters would be drawn at first use instead, after
/// whatever else used the generator meanwhile, and by another device's generator when the model
/// is forked there first (which made wgpu training differ from the CPU's).
#[test]
fn adapters_are_drawn_when_built() {
    let device = Device::flex().autodiff();
    let mut id = MethodConfig::new(MethodKind::IdLora, 2).with_dropout(0.0);
    id.k = 2;
    let sets = IndexSets::new(vec![vec![0, 1], vec![2, 3]]).unwrap();
    let methods = [
        (MethodConfig::new(MethodKind::Lora, 3).with_dropout(0.0), None),
        (MethodConfig::new(MethodKind::Dora, 3).with_dropout(0.0), None),
        (MethodConfig::new(MethodKind::HydraLora, 2).with_dropout(0.0), None),
        (MethodConfig::new(MethodKind::MoeLora, 2).with_dropout(0.0), None),
        (id, Some(sets)),
    ];
    for (c, s) in &methods {
        let build = |draw_between: bool| {
            device.seed(11);
            let w = Tensor::<2>::from_data(TensorData::new(vec![0.25f32; 6 * 8], [6, 8]), &device);
            let base = Linear { weight: Param::from_tensor(w), bias: None };
            let layer = AdaptedLinear::new("l", base, c, s.as_ref()).unwrap();
            if draw_between {
                let _ = values(Tensor::<2>::random([4, 4], Distribution::Default, &device));
            }
            let mut v = Values(Vec::new());
            layer.adapter.expect("an adapter").visit(&mut v);
            v.0
        };
        let (now, later) = (build(false), build(true));
        assert!(now.iter().any(|&v| v != 0.0), "{:?}: no random initialisation", c.kind);
        assert_eq!(now, later, "{:?}: the initialisation depends on draws made after building", c.kind);
    }
}
