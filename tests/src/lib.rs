pub mod harness;
pub mod gateway_process;
pub mod edge;
pub mod raw;
pub mod sdk;
pub mod attack;
pub mod prober;
pub mod openloop;
