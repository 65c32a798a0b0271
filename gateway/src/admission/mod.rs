pub mod auth;
pub mod limits;
pub mod quota;
