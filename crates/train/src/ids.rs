//! Deterministic parameter ids.
//!
//! burn gives every parameter a random 64-bit id when a module is built, and writes the ids into records: two
//! identical trainings would write different model files. [`deterministic_ids`] replaces each id by a hash of the
//! parameter's path in the module (`encoder.0.conv.weight`), so identical models are identical files, and a record
//! always matches the module it came from. Parameters keep their lazy initialisation: no value is computed here.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::module::Module;
//! use burn::nn::LinearConfig;
//! use vesalius_train::ids::deterministic_ids;
//! let device = Default::default();
//! let a = deterministic_ids(LinearConfig::new(3, 2).init::<Flex>(&device));
//! let b = deterministic_ids(LinearConfig::new(3, 2).init::<Flex>(&device));
//! assert_eq!(a.weight.id, b.weight.id);
//! assert_ne!(a.weight.id, a.bias.as_ref().unwrap().id);
//! ```
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

/// FNV-1a, 64 bits.
fn fnv(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

struct PathIds {
    path: Vec<String>,
}

impl PathIds {
    fn id(&self, kind: &str) -> ParamId {
        ParamId::from(fnv(&format!("{}#{kind}", self.path.join("."))))
    }
}

impl<B: Backend> ModuleMapper<B> for PathIds {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.id = self.id("float");
        param
    }
    fn map_int<const D: usize>(&mut self, mut param: Param<Tensor<B, D, Int>>) -> Param<Tensor<B, D, Int>> {
        param.id = self.id("int");
        param
    }
    fn map_bool<const D: usize>(&mut self, mut param: Param<Tensor<B, D, Bool>>) -> Param<Tensor<B, D, Bool>> {
        param.id = self.id("bool");
        param
    }
}

/// The module with every parameter id derived from its path.
pub fn deterministic_ids<B: Backend, M: Module<B>>(module: M) -> M {
    module.map(&mut PathIds { path: Vec::new() })
}
