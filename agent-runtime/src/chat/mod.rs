//! Conversations: group chats, two-agent chats, nested and sequential chats.
