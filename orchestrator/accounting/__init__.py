"""Keys, limits and durable usage: who may call which model, how much, and what they used."""
