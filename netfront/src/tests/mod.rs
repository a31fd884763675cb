mod abi;
mod csum;
mod features;
mod rx;
mod tx;
