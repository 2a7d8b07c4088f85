"""The papers' reported tables as data, the checker, and the cross-method benchmark."""
