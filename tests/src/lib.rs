pub mod harness;
pub mod gateway_process;
