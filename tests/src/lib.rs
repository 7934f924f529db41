pub mod attack;
pub mod edge;
pub mod gateway_process;
pub mod harness;
pub mod openloop;
pub mod prober;
pub mod raw;
pub mod sdk;
