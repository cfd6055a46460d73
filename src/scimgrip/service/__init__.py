"""Protocol orchestration between the HTTP layer and storage: SCIM operations and Bulk."""
