//! What lunkeeper created or adopted.
